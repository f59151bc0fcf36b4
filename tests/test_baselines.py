"""The comparison methods (docs/method.md §6): each defining piece on fresh random inputs. (Every method's
training step, at every preset's image size: tests/test_interfaces.py.)"""

import math
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import eqx_ffvae as ff
from eqx_ffvae import baselines as bl
from eqx_ffvae import metrics

SHAPE = (3, 28, 28)


def _tiny(cls, **extra):
    return cls(image_shape=SHAPE, num_frames=4, latent_dim=4, num_flows=3, width=4, **extra)


# ---- β-VAE --------------------------------------------------------------------------------------


def test_beta_multiplies_exactly_the_kl_term(getkey):
    init_key = getkey()
    vae = bl.VAE(_tiny(bl.VAEConfig), key=init_key)
    beta = bl.VAE(_tiny(bl.VAEConfig, beta=4.0), key=init_key)
    x, key = jr.uniform(getkey(), (4, *SHAPE)), getkey()
    loss1, t1 = eqx.filter_jit(lambda m: m.loss(x, 0, key=key))(vae)
    loss4, t4 = eqx.filter_jit(lambda m: m.loss(x, 0, key=key))(beta)
    assert t1["kl"] > 0 and t1["recon"] == t4["recon"] and t1["kl"] == t4["kl"]
    np.testing.assert_allclose(loss1, -t1["recon"] + t1["kl"], rtol=1e-6)
    np.testing.assert_allclose(loss4, -t1["recon"] + 4.0 * t1["kl"], rtol=1e-6)


# ---- FactorVAE ----------------------------------------------------------------------------------


def _correlated(key, n, d, noise):
    shared_key, noise_key = jr.split(key)
    return jr.normal(shared_key, (n, 1)) + noise * jr.normal(noise_key, (n, d))


def test_permutation_keeps_marginals_and_breaks_dependence(getkey):
    z = _correlated(getkey(), 4000, 3, 0.1)
    perm = bl.permute_dims(z, key=getkey())
    np.testing.assert_array_equal(np.sort(z, axis=0), np.sort(perm, axis=0))
    assert np.corrcoef(z.T)[0, 1] > 0.95
    off_diag = np.corrcoef(perm.T)[~np.eye(3, dtype=bool)]
    assert np.all(np.abs(off_diag) < 0.06), off_diag
    assert not np.array_equal(perm[:, 0], z[:, 0]) and not np.array_equal(perm[:, 0], perm[:, 1])


@pytest.fixture(scope="module")
def fit_discriminator():
    """Train a fresh discriminator on samples from `sampler`; return its TC estimate on new ones."""
    d, batch, optim = 4, 256, optax.adam(2e-3)

    @eqx.filter_jit
    def step(disc, state, z, key):
        loss, grads = eqx.filter_value_and_grad(bl.discriminator_loss)(disc, z, key=key)
        updates, state = optim.update(grads, state, disc)
        return eqx.apply_updates(disc, updates), state, loss

    def fit(sampler, key):
        init_key, key = jr.split(key)
        disc = bl.Discriminator(d, 64, 2, key=init_key)
        state = optim.init(eqx.filter(disc, eqx.is_array))
        for i in range(400):
            disc, state, _ = step(
                disc,
                state,
                sampler(jr.fold_in(key, 2 * i), batch),
                jr.fold_in(key, 2 * i + 1),
            )
        return float(eqx.filter_jit(bl.total_correlation)(disc, sampler(jr.fold_in(key, 10**6), 4096)))

    return fit, d


def test_tc_estimate_near_zero_for_independent_latents(fit_discriminator, getkey):
    fit, d = fit_discriminator
    tc = fit(lambda key, n: jr.normal(key, (n, d)), getkey())
    assert abs(tc) < 0.1, tc


def test_tc_estimate_positive_for_correlated_latents(fit_discriminator, getkey):
    fit, d = fit_discriminator
    tc = fit(lambda key, n: _correlated(key, n, d, 0.2), getkey())
    # the true TC of this Gaussian is −½ log det(corr) ≈ 4.6 nats; the estimator needs only be clearly > 0
    assert tc > 1.0, tc


# ---- SlowVAE ------------------------------------------------------------------------------------


def test_laplace_kl_matches_monte_carlo(getkey, x64):
    d, rate, n = 5, 6.0, 400_000
    mu, loc = jr.normal(getkey(), (d,)), jr.normal(getkey(), (d,)) * 0.3
    logvar = jr.uniform(getkey(), (d,), minval=-4.0, maxval=0.5)
    z = mu[None] + jnp.exp(0.5 * logvar)[None] * jr.normal(getkey(), (n, d))
    log_q = jax.vmap(lambda z: ff.objectives.gaussian_log_prob(z, mu, logvar))(z)
    log_p = jnp.sum(jnp.log(rate / 2) - rate * jnp.abs(z - loc[None]), axis=1)
    samples = log_q - log_p
    mc, se = float(samples.mean()), float(samples.std() / math.sqrt(n))
    closed = float(bl.kl_gaussian_laplace(mu, logvar, loc, rate))
    assert abs(closed - mc) < 4 * se, (closed, mc, se)
    assert closed > 0


# ---- TVAE ---------------------------------------------------------------------------------------


class _Flatten(eqx.Module):
    """An 'encoder' whose mean is the image itself (times `scale`), with a fixed log-variance."""

    scale: float
    logvar: float

    def __call__(self, x):
        flat = x.reshape(-1)
        return self.scale * flat, jnp.full_like(flat, self.logvar)


class _Logit(eqx.Module):
    shape: tuple = eqx.field(static=True)

    def __call__(self, s):
        return jax.scipy.special.logit(s).reshape(self.shape)


def test_tvae_error_is_zero_when_the_data_rolls_the_latent(getkey):
    """A TVAE whose encoder reads the latent off the image and whose decoder writes it back (u has
    mean 0 and variance 1/(spatial × time window), so the pooled E[u²] is 1 and s = z): for data that
    roll within capsules, E_k is 0 for every k; for data that do not, it is not."""
    config = bl.TVAEConfig(image_shape=(1, 28, 28), num_frames=5, latent_dim=784, num_flows=2, width=2, capsule_size=28)
    model = bl.TVAE(config, key=getkey())
    window = config.spatial_window * (2 * config.time_window + 1)
    model = eqx.tree_at(
        lambda m: (m.encoder, m.u_encoder, m.decoder),
        model,
        (_Flatten(1.0, 0.0), _Flatten(0.0, math.log(1.0 / window)), _Logit((1, 28, 28))),
    )
    x0 = jr.uniform(getkey(), (784,), minval=0.1, maxval=0.9)
    rolled = jax.vmap(lambda t: bl.capsule_roll(x0, t, 28))(jnp.arange(5)).reshape(5, 1, 28, 28)
    e = eqx.filter_jit(metrics.equivariance_error)
    for k in range(2):  # a sum over 4 × 784 pixels: 1e-2 is float32 round-off (~3e-6 per pixel)
        assert float(e(model, rolled, k)) < 1e-2
    assert float(e(model, rolled[:, :, :, ::-1], 0)) > 1.0
    np.testing.assert_allclose(model.encode(rolled[0])[0], x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"num_frames": 8, "latent_dim": 6}, "num_frames=8 .* latent_dim=6"),
        ({"latent_dim": 12, "capsule_size": 5}, "capsule_size 5 does not divide latent_dim 12"),
        ({"latent_dim": 12, "capsule_size": 4, "spatial_window": 2}, "spatial_window must be odd"),
    ],
)
def test_a_tvae_capsule_that_does_not_fit_is_refused_by_name(fields, named):
    with pytest.raises(ValueError, match=named):
        ff.methods.make_config("tvae", **fields)


def test_tvae_is_scored_with_its_training_window(getkey):
    """Evaluation sees one frame; its pooled denominator equals training's window at an interior frame
    when the neighbours are the model's own roll (u_{t+δ} = roll(u_t, δ)), and differs from a
    one-frame pool (what evaluation used before) by the window's 2·time_window + 1 terms."""
    config = bl.TVAEConfig(image_shape=(1, 28, 28), num_frames=5, latent_dim=20, num_flows=2, width=2)
    model = bl.TVAE(config, key=getkey())
    u2 = jr.uniform(getkey(), (20,))
    size = config.capsules
    seq = jax.vmap(lambda t: bl.capsule_roll(u2, t - 2, size))(jnp.arange(5))  # frame 2 is u2 itself
    np.testing.assert_allclose(model.window_pool(seq, 2), model.frame_pool(u2), rtol=1e-6)
    np.testing.assert_allclose(model.frame_pool(u2), 3 * model._pool(u2), rtol=1e-6)
    edge = model.window_pool(seq, 0)  # frame 0 has one neighbour inside the sequence
    np.testing.assert_allclose(edge, 2 * model._pool(seq[0]), rtol=1e-6)


def test_capsule_roll_rolls_each_capsule():
    v = jnp.arange(6.0)
    np.testing.assert_array_equal(bl.capsule_roll(v, 1, 3), [2, 0, 1, 5, 3, 4])
    np.testing.assert_array_equal(bl.capsule_roll(v, 3, 3), v)


# ---- PoFlow -------------------------------------------------------------------------------------


class _TravellingWave(ff.AbstractAutodiffPotential):
    a: jax.Array
    c: float

    def __call__(self, t, z):
        return jnp.sin(jnp.dot(self.a, z) - self.c * jnp.linalg.norm(self.a) * t)


def test_wave_residual_vanishes_on_a_travelling_wave(getkey, x64):
    a = jr.normal(getkey(), (5,), jnp.float64)
    wave = _TravellingWave(a, 1.7)
    for _ in range(3):
        t, z = (
            jr.uniform(getkey(), (), jnp.float64) * 3,
            jr.normal(getkey(), (5,), jnp.float64),
        )
        assert abs(float(bl.wave_residual(wave, 1.7, t, z))) < 1e-10
        scale = float(jnp.dot(a, a))
        assert abs(float(bl.wave_residual(wave, 1.2, t, z))) > 1e-3 * scale or abs(float(wave(t, z))) < 1e-3


def test_classifier_loss_falls_on_separable_flows(getkey):
    """Latent steps of three flows along different directions (plus noise): the classifier learns
    to name the flow, so its loss falls from ≈ log 3 to near 0."""
    d, k_flows = 6, 3
    config = bl.PoFlowConfig(image_shape=SHAPE, num_frames=4, latent_dim=d, num_flows=k_flows, width=4)
    model = bl.PoFlow(config, key=getkey())
    directions = jr.normal(getkey(), (k_flows, d))
    optim = optax.adam(1e-2)
    classifier = model.classifier  # the model's own classifier, freshly initialised
    state = optim.init(eqx.filter(classifier, eqx.is_array))

    def batch_loss(cls, key):
        ks = jnp.arange(30) % k_flows
        steps = directions[ks][:, None] + 0.3 * jr.normal(key, (30, 4, d))
        return jnp.mean(jax.vmap(lambda s, k: bl.classifier_loss(cls, s, k))(steps, ks))

    @eqx.filter_jit
    def step(cls, state, key):
        loss, grads = eqx.filter_value_and_grad(batch_loss)(cls, key)
        updates, state = optim.update(grads, state, cls)
        return eqx.apply_updates(cls, updates), state, loss

    first = float(eqx.filter_jit(batch_loss)(classifier, getkey()))
    for _ in range(150):
        classifier, state, _ = step(classifier, state, getkey())
    last = float(eqx.filter_jit(batch_loss)(classifier, getkey()))
    assert abs(first - math.log(3)) < 0.5 and last < 0.1 * first, (first, last)


def test_poflow_authors_protocol(getkey):
    """The authors' loss at step t depends on x_0, x_t and x_{t+1} alone, and `batch_loss` is the
    mean of it at ONE t for the whole batch (drawn from the key), as their trainer does."""
    model = bl.PoFlow(_tiny(bl.PoFlowConfig, potential_width=8, protocol="authors"), key=getkey())
    one = eqx.filter_jit(lambda m, x, k, t, key: m.authors_loss(x, k, t, key=key)[0])
    x = jr.uniform(getkey(), (4, *SHAPE))
    key, t = getkey(), jnp.array(1)
    k = jnp.array(2)
    loss = one(model, x, k, t, key)
    other = x.at[3].set(jr.uniform(getkey(), SHAPE))  # frame 3 is neither 0, t nor t+1
    np.testing.assert_allclose(one(model, other, k, t, key), loss, rtol=1e-6)
    moved = x.at[2].set(jr.uniform(getkey(), SHAPE))
    assert abs(float(one(model, moved, k, t, key) - loss)) > 1e-3

    frames, ks, key = jr.uniform(getkey(), (3, 4, *SHAPE)), jnp.array([0, 1, 2]), getkey()
    batch, _ = eqx.filter_jit(lambda m, f, ks, key: m.batch_loss(f, ks, key=key, step=None))(model, frames, ks, key)
    t_key, rest = jr.split(key)
    drawn = jr.randint(t_key, (), 0, 3)
    keys = jr.split(rest, 3)
    at = {s: np.mean([one(model, frames[i], ks[i], jnp.array(s), keys[i]) for i in range(3)]) for s in range(3)}
    np.testing.assert_allclose(batch, at[int(drawn)], rtol=1e-5)
    assert all(abs(float(batch) - v) > 1e-3 for s, v in at.items() if s != int(drawn))


def test_poflow_proposal_is_its_flow_with_density(getkey):
    """PoFlow proposes like the FFVAE: z_0 from q(z_0|x_0) carried by Euler steps along ∇u^k (at the
    proposal's `proposal_steps_per_frame`), each step lowering log q by the map's exact
    log det(I + h∇²u^k) at the step's start (docs/method.md §3)."""
    config = bl.PoFlowConfig(image_shape=SHAPE, num_frames=4, latent_dim=5, num_flows=2, width=4, potential_width=16)
    model = bl.PoFlow(config, key=getkey())
    x = jr.uniform(getkey(), (4, *SHAPE))
    zs, logqs = eqx.filter_jit(lambda m, x, key: m.importance_proposal(x, 1, key=key))(model, x, getkey())
    pot, n = model.flows.potential(1), model.proposal_steps_per_frame
    h = 1.0 / n
    z, logq = zs[0], logqs[0]
    for step in range(3 * n):
        grad, _ = pot.grad_and_laplacian(step * h, z)
        hess = jax.hessian(lambda v: pot(step * h, v))(z)  # noqa: B023 (called inside the loop)
        z, logq = z + h * grad, logq - jnp.linalg.slogdet(jnp.eye(5) + h * hess)[1]
        if (step + 1) % n == 0:
            t = (step + 1) // n
            np.testing.assert_allclose(zs[t], z, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(logqs[t], logq, rtol=1e-5, atol=1e-4)
    mu, _ = model.encode(x[0])
    assert float(jnp.linalg.norm(zs[0] - mu)) > 0


_SAME_WEIGHTS = """
import sys
import equinox as eqx, jax, jax.random as jr, numpy as np
import eqx_ffvae as ff

for name in sys.argv[1:]:
    config = ff.methods.make_config(
        name, image_shape=(3, 28, 28), num_frames=4, latent_dim=4, num_flows=3, width=4, potential_width=8
    )
    compiled = ff.methods.make_model(name, config, key=jr.key(7))
    eager = ff.methods.get_method(name).model_cls(config, key=jr.key(7))
    assert jax.tree.structure(compiled) == jax.tree.structure(eager), name
    arrays = lambda model: jax.tree.leaves(eqx.filter(model, eqx.is_array))
    for a, b in zip(arrays(compiled), arrays(eager), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
"""


@pytest.mark.slow
def test_make_model_draws_the_weights_of_eager_construction():
    """`make_model` builds in one compiled program (at a lighter LLVM optimisation level); the weights
    must still be those of `model_cls(config, key=key)`, bit for bit, or runs would change with it. In a
    process of its own at XLA's default flags (this suite compiles at -O0, conftest.py, which eager
    construction would follow)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", _SAME_WEIGHTS, "ffvae-weak", "poflow"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
