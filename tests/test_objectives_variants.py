"""The FFVAE's other objectives (docs/method.md §4): the path-space ELBO (`ffvae-sde`), its authors'
trainer (`ffvae-authors`) and the rate-tax rollout VAE (`ffvae-rollout-kl0`)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jaxtyping import Array, Float

from eqx_ffvae import methods
from eqx_ffvae.ffvae_authors import AuthorsFFVAE, AuthorsFFVAEConfig, authors_batch_terms, prior_increments
from eqx_ffvae.flows import flow, frame_times
from eqx_ffvae.layout import Layout
from eqx_ffvae.potentials import AbstractAutodiffPotential, MLPPotential
from eqx_ffvae.sde import brownian_path, sde_path


class QuadraticPotential(AbstractAutodiffPotential):
    """u(z) = vᵀz + ½ zᵀAz (A symmetric): drift v + Az."""

    v: Float[Array, " d"]
    a: Float[Array, "d d"]

    def __call__(self, t, z):
        del t
        return self.v @ z + 0.5 * z @ self.a @ z


def _chain_kl(v, a, z0, diffusion, h, steps):
    """Closed form of E Σ_i h ‖v + A z_i‖² / (4D) for the Euler–Maruyama chain
    z_{i+1} = z_i + h (v + A z_i) + √(2Dh) ξ_i from a fixed z_0: z_i is Gaussian (m_i, S_i)."""
    d = z0.shape[0]
    m, s = np.asarray(z0, np.float64), np.zeros((d, d))
    step = np.eye(d) + h * np.asarray(a, np.float64)
    total = 0.0
    for _ in range(steps):
        drift_mean = np.asarray(v, np.float64) + a @ m
        total += h * (drift_mean @ drift_mean + np.trace(a @ s @ a.T)) / (4 * diffusion)
        m = step @ m + h * np.asarray(v, np.float64)
        s = step @ s @ step.T + 2 * diffusion * h * np.eye(d)
    return total


@pytest.mark.parametrize("dt0", [1.0, 0.25])
def test_path_kl_of_a_constant_drift_is_exact(getkey, dt0):
    v = jr.normal(getkey(), (5,))
    pot = QuadraticPotential(v, jnp.zeros((5, 5)))
    diffusion = 0.7
    solve = eqx.filter_jit(lambda z, k: sde_path(pot, z, frame_times(9), diffusion, key=k, dt0=dt0))
    zs, kls = solve(jr.normal(getkey(), (5,)), getkey())
    expected = np.arange(9) * float(v @ v) / (4 * diffusion)
    np.testing.assert_allclose(kls, expected, rtol=1e-5)
    assert zs.shape == (9, 5)


@pytest.mark.slow
def test_path_kl_of_a_linear_drift_matches_the_closed_form_and_the_log_radon_nikodym(getkey):
    """Monte Carlo over Brownian paths: the mean Girsanov estimate, the mean log-ratio of the two chains'
    transition densities (the log Radon–Nikodym derivative) and the closed form agree."""
    d, diffusion, h, draws = 3, 0.5, 0.5, 4000
    q = jr.normal(getkey(), (d, d))
    a = -0.3 * (q @ q.T) / d
    v = jr.normal(getkey(), (d,))
    pot = QuadraticPotential(v, a)
    z0 = jr.normal(getkey(), (d,))
    exact = _chain_kl(np.asarray(v), np.asarray(a), z0, diffusion, h, 8)
    # every Euler–Maruyama step saved (t = 0, h, …, 4): the Girsanov estimate and the states for log dP/dQ
    steps = np.arange(9, dtype=np.float32) * h
    solve = eqx.filter_jit(jax.vmap(lambda k: sde_path(pot, z0, steps, diffusion, key=k, dt0=h)))
    fine, kls = solve(jr.split(getkey(), draws))
    prev, nxt = fine[:, :-1], fine[:, 1:]
    drift = v[None, None] + prev @ a.T
    var = 2 * diffusion * h
    log_ratio = jnp.sum((jnp.sum((nxt - prev) ** 2, -1) - jnp.sum((nxt - prev - h * drift) ** 2, -1)) / (2 * var), -1)

    for estimate in (kls[:, -1], log_ratio):
        mean, se = float(jnp.mean(estimate)), float(jnp.std(estimate)) / np.sqrt(draws)
        assert abs(mean - exact) < 4 * se + 1e-4 * exact, (mean, se, exact)


def test_sde_mean_path_without_noise_is_the_ffvae_flow(getkey):
    pot = MLPPotential(6, 16, key=getkey())
    z0 = jr.normal(getkey(), (6,))
    ts = frame_times(9)
    zs, _ = eqx.filter_jit(lambda z, k: sde_path(pot, z, ts, 1e-16, key=k))(z0, getkey())
    ode, _ = eqx.filter_jit(lambda z: flow(pot, z, 0.0, ts))(z0)
    np.testing.assert_allclose(zs, ode, atol=1e-5)


def test_the_brownian_path_samples_as_diffrax_does_with_no_host_callback(getkey):
    """`UncheckedBrownianTree` gives diffrax's `VirtualBrownianTree` samples bit for bit (values and
    increments), and a compiled posterior path holds no host callback (the tree's range check is one)."""
    path = brownian_path(getkey(), 6.0, 1.0, 4)
    assert (path.t0, path.t1, path.levy_area) == (0.0, 8.0, diffrax.BrownianIncrement)  # the dyadic span ⊇ [0, 6]
    for t0, t1 in [(0.0, 1.0), (3.0, 4.0), (7.0, 8.0), (2.0, 5.0), (5.0, None)]:
        for ours, theirs in zip(jax.tree.leaves(path.evaluate(t0, t1)), jax.tree.leaves(path.tree.evaluate(t0, t1))):
            np.testing.assert_array_equal(ours, theirs)
    pot = MLPPotential(4, 8, key=getkey())
    solve = jax.jit(lambda z, key: sde_path(pot, z, frame_times(4), 0.1, key=key))
    assert "callback" not in solve.lower(jnp.zeros(4), getkey()).as_text()


def test_sde_path_rejects_times_off_its_grid(getkey):
    pot = MLPPotential(4, 8, key=getkey())
    with pytest.raises(ValueError, match="multiples of dt0"):
        sde_path(pot, jnp.zeros(4), np.array([0.0, 0.5, 1.0]), 1.0, key=getkey(), dt0=1.0)


def _tiny(name, **fields):
    config = methods.make_config(name, latent_dim=8, width=8, **fields)
    return methods.make_model(name, config, key=jr.key(3))


@pytest.fixture(scope="module")
def sde_model():
    return _tiny("ffvae-sde", potential_width=16)


@pytest.mark.slow
def test_sde_batched_loss_equals_vmap_of_the_sequence_loss(sde_model):
    frames = jr.uniform(jr.key(1), (3, 9, 3, 28, 28))
    ks = jnp.array([0, 2, 1])
    key = jr.key(2)

    def door(m):
        return m.batch_loss(frames, ks, key=key, step=None, layout=Layout(2))[0]

    def definition(m):
        keys = jr.split(key, 3)
        return jnp.mean(jax.vmap(lambda x, k, kk: m.loss(x, k, key=kk)[0])(frames, ks, keys))

    (v1, g1), (v2, g2) = (eqx.filter_jit(eqx.filter_value_and_grad(f))(sde_model) for f in (door, definition))
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sde_terms_are_the_path_elbo(sde_model):
    """kl_flow is the sum of the per-frame path KLs, and −elbo = −recon + kl0 + kl_flow."""
    frames = jr.uniform(jr.key(4), (9, 3, 28, 28))
    _, terms = eqx.filter_jit(lambda m, x: m.loss(x, 1, key=jr.key(5)))(sde_model, frames)
    per_frame = sum(terms[f"kl_t{t}"] for t in range(1, 9))
    np.testing.assert_allclose(per_frame, terms["kl_flow"], rtol=1e-5)
    np.testing.assert_allclose(-terms["elbo"], -terms["recon"] + terms["kl0"] + terms["kl_flow"], rtol=1e-5)
    assert float(terms["kl_flow"]) > 0


def test_rollout_kl0_charges_the_z0_kl_once_per_frame():
    plain, taxed = _tiny("ffvae-rollout"), _tiny("ffvae-rollout-kl0")
    frames = jr.uniform(jr.key(6), (9, 3, 28, 28))
    loss = eqx.filter_jit(lambda m, x: m.loss(x, 0, key=jr.key(7)))
    (l1, t1), (l2, t2) = loss(plain, frames), loss(taxed, frames)
    np.testing.assert_allclose(l2 - l1, 8 * t1["kl0"], atol=1e-6 * abs(float(l1)) * 8)
    np.testing.assert_allclose(t2["elbo"], t1["elbo"], rtol=1e-6)


def _authors():
    return AuthorsFFVAE(AuthorsFFVAEConfig(latent_dim=8, width=8), key=jr.key(8))


def test_authors_evaluation_path_is_their_training_path():
    """`transport` (what E_k follows) steps with their potential at their time τ = t: the z_t of
    their training loop."""
    model = _authors()
    frames = jr.uniform(jr.key(9), (2, 9, 3, 28, 28))
    mu, logvar = eqx.filter_jit(lambda x: jax.vmap(model.encode)(x))(frames[:, 0])

    @eqx.filter_jit
    def training_path(model, mu, logvar, frames):
        captured = {}

        def lls(zs, xs):
            captured["zs"] = zs
            return jnp.zeros(zs.shape[:2])

        eps = jnp.zeros_like(mu)
        authors_batch_terms(model.flows, model.prior_scale, lls, mu, logvar, eps, frames, jnp.array([2, 2]))
        return captured["zs"]

    paths = eqx.filter_jit(lambda z: jax.vmap(lambda x: model.transport(2, x))(z))(mu)
    np.testing.assert_allclose(training_path(model, mu, logvar, frames), paths, rtol=1e-5, atol=1e-6)


def test_authors_prior_is_a_normalised_density():
    """p^k_t integrates to one (importance sampling from a Gaussian 1.5× wider than its scale s_t)."""
    model = _authors()
    model = eqx.tree_at(lambda m: m.prior_scale, model, jnp.linspace(0.5, 2.0, 24).reshape(3, 8))
    log_scales = np.concatenate([[0.0], np.cumsum(np.log1p(np.asarray(prior_increments(model.prior_scale[1]))))])
    for t in (0, 1, 3, 8):
        width = 1.5 * np.exp(log_scales[t])
        z = width * jr.normal(jr.key(t), (20000, 8))
        log_q = -0.5 * jnp.sum((z / width) ** 2, axis=1) - 8 * (0.5 * np.log(2 * np.pi) + np.log(width))
        log_p = eqx.filter_jit(jax.vmap(lambda x, t=t: model.prior_log_prob(1, float(t), x)))(z)
        mass = float(jnp.mean(jnp.exp(log_p - log_q)))
        assert abs(mass - 1.0) < 0.08, (t, mass)
    assert log_scales[1] == pytest.approx(np.log(2.0))  # c_1 = D = 1: their first prior step doubles z


def test_authors_batch_of_one_is_the_sequence_loss():
    model = _authors()
    frames = jr.uniform(jr.key(10), (1, 9, 3, 28, 28))
    loss, _ = eqx.filter_jit(lambda m, x: m.loss(x, 1, key=jr.key(11)))(model, frames[0])
    batch, _ = eqx.filter_jit(lambda m, x: m.batch_loss(x, jnp.array([1]), key=jr.key(11), step=None))(model, frames)
    np.testing.assert_allclose(loss, batch, rtol=1e-6)


def test_authors_batch_couples_its_hj_term_only():
    """Their HJ residual sums ∂_τu over the batch and averages ‖∇u‖² over batch × d: a batch's HJ term is
    not the mean of its rows' alone; reconstruction, KL and the flow term are per-row means."""
    model = _authors()
    frames = jr.uniform(jr.key(12), (2, 9, 3, 28, 28))
    mu, logvar = eqx.filter_jit(lambda x: jax.vmap(model.encode)(x))(frames[:, 0])
    eps = jr.normal(jr.key(13), mu.shape)
    lls = jax.vmap(model.decoder.log_likelihoods)

    @eqx.filter_jit
    def terms(rows):
        ks = jnp.zeros((len(rows),), jnp.int32)
        return authors_batch_terms(
            model.flows, model.prior_scale, lls, mu[rows], logvar[rows], eps[rows], frames[rows], ks
        )

    both, first, second = terms(np.array([0, 1])), terms(np.array([0])), terms(np.array([1]))
    for name in ("recon", "kl0", "rho_kl"):
        np.testing.assert_allclose(both[name], (first[name] + second[name]) / 2, rtol=1e-5)
    assert not np.isclose(float(both["hj"]), float(first["hj"] + second["hj"]) / 2, rtol=1e-3)
