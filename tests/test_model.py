"""The Flow Factorized VAE: gradients, the weak objective, the likelihood bound, jit/vmap."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_ffvae as ff
from eqx_ffvae import metrics

CONFIG = ff.FFVAEConfig(
    image_shape=(3, 28, 28), num_frames=4, latent_dim=6, num_flows=3, width=4, potential_width=16, hj_weight=1.0
)


@pytest.fixture(scope="module")
def model():
    return ff.FlowFactorizedVAE(CONFIG, key=jr.key(1))


@pytest.fixture(scope="module")
def weak_model():
    return ff.WeakFFVAE(ff.FFVAEConfig(**{**CONFIG.__dict__, "weakly_supervised": True}), key=jr.key(2))


@pytest.fixture(scope="module")
def sequences():
    return jr.uniform(jr.key(3), (3, 4, 3, 28, 28))


def test_shapes(model, sequences):
    mu, logvar = eqx.filter_jit(lambda m, x: m.encode(x))(model, sequences[0, 0])
    assert mu.shape == logvar.shape == (6,)
    assert eqx.filter_jit(lambda m, z: m.decode(z))(model, mu).shape == (3, 28, 28)


def test_elbo_gradients_reach_every_parameter(model, sequences, getkey):
    def total(m):
        losses, _ = jax.vmap(lambda x, k, key: m.loss(x, k, key=key))(sequences, jnp.arange(3), jr.split(getkey(), 3))
        return jnp.sum(losses)

    grads = eqx.filter_jit(eqx.filter_grad(total))(model)
    leaves, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(grads, eqx.is_inexact_array))
    assert len(leaves) > 20
    for path, g in leaves:
        assert jnp.all(jnp.isfinite(g)), jax.tree_util.keystr(path)
        if g.ndim and g.shape[0] == CONFIG.num_flows and "flows" in jax.tree_util.keystr(path):
            for k in range(CONFIG.num_flows):
                assert jnp.any(g[k] != 0), f"{jax.tree_util.keystr(path)}[{k}] gets no gradient"
        else:
            assert jnp.any(g != 0), f"{jax.tree_util.keystr(path)} gets no gradient"


def test_loss_terms_add_up(model, sequences, getkey):
    loss, t = eqx.filter_jit(lambda x, key: model.loss(x, 2, key=key))(sequences[0], getkey())
    np.testing.assert_allclose(t["elbo"], t["recon"] - t["kl0"] - t["kl_flow"], rtol=1e-5)
    np.testing.assert_allclose(loss, -t["elbo"] + CONFIG.hj_weight * t["hj"], rtol=1e-5)


def test_weak_loss_is_weighted_sum_of_per_k_losses(weak_model, sequences, getkey):
    key, x = getkey(), sequences[1]

    @eqx.filter_jit
    def pieces(m):
        loss, terms = m.weak_loss(x, key=key)
        q = jax.nn.softmax(m.flow_posterior_logits(x))
        per_k, _ = jax.vmap(lambda k: m.loss(x, k, key=key))(jnp.arange(3))
        grads = eqx.filter_grad(lambda m: m.weak_loss(x, key=key)[0])(m)
        return loss, terms, q, per_k, grads

    # q starts exactly uniform (zero logits layer), which blocks the gradient below it: perturb it
    head = weak_model.sequence_encoder.net.heads[-1]
    weak_model = eqx.tree_at(
        lambda m: m.sequence_encoder.net.heads[-1].weight, weak_model, jr.normal(getkey(), head.weight.shape)
    )
    loss, terms, q, per_k, grads = pieces(weak_model)
    kl = jnp.sum(q * jnp.log(3 * q))
    np.testing.assert_allclose(loss, q @ per_k + kl, rtol=1e-5)
    np.testing.assert_allclose(terms["kl_k"], kl, rtol=1e-5)
    assert all(jnp.any(g != 0) for g in jax.tree.leaves(grads.sequence_encoder))


def test_what_a_model_observes_of_k_is_its_class(model, weak_model):
    """q(k | x̄) is a capability of the class, and the config records which class it builds."""
    assert not isinstance(model, ff.AbstractFlowInferenceModel)
    assert "flow_posterior_logits" not in dir(model)
    assert isinstance(weak_model, ff.AbstractFlowInferenceModel)
    with pytest.raises(ValueError, match="WeakFFVAE"):
        ff.FlowFactorizedVAE(weak_model.config, key=jr.key(0))
    with pytest.raises(ValueError, match="weakly_supervised=True"):
        ff.WeakFFVAE(model.config, key=jr.key(0))
    with pytest.raises(ValueError, match="group_supervised=True"):
        ff.GroupFFVAE(weak_model.config, key=jr.key(0))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"num_frames": 1}, "num_frames must be ≥ 2"),
        ({"steps_per_frame": 0}, "steps_per_frame"),
        ({"min_flow_share": 1.5}, "min_flow_share"),
        ({"density": "exact"}, "density"),  # the suite's type checker names it first (TypeError)
        ({"objective": "sde"}, "objective"),
        ({"objective": "path", "group_supervised": True}, "objective='path'"),
        ({"weakly_supervised": True, "group_supervised": True}, "exclude each other"),
    ],
)
def test_a_bad_config_value_is_named(fields, named):
    with pytest.raises((ValueError, TypeError), match=named):
        ff.FFVAEConfig(**fields)


def test_importance_sampled_likelihood_bounds_elbo(model, sequences, getkey):
    """The S-sample estimate lies above the mean of single-draw bounds (Jensen), and a single draw of
    the own proposal (S = 1) averages to the ELBO up to the trace form's log-det gap (the loss tracks
    log q with h Δu; the estimator with the map's exact log-det)."""
    x, k = sequences[0], 1

    @eqx.filter_jit
    def estimates(m, key):
        ll_key, elbo_key, one_key = jr.split(key, 3)
        ll, _ = metrics.log_likelihood(m, x, k, key=ll_key, num_samples=256)
        elbos = jax.vmap(lambda key: m.loss(x, k, key=key)[1]["elbo"])(jr.split(elbo_key, 256))
        one, _ = jax.vmap(lambda key: metrics.log_likelihood(m, x, k, key=key, num_samples=1))(jr.split(one_key, 256))
        return ll, elbos, one

    ll, elbos, one_sample = estimates(model, getkey())
    assert ll.shape == (4,)
    assert jnp.sum(ll) >= jnp.mean(jnp.sum(one_sample, -1))
    np.testing.assert_allclose(jnp.mean(jnp.sum(one_sample, -1)), jnp.mean(elbos), rtol=1e-3)


def test_equivariance_metrics(model, sequences):
    x = sequences[0]

    @eqx.filter_jit
    def pieces(m):
        mu, _ = m.encode(x[0])
        zs = m.transport(0, mu)
        means = jax.vmap(lambda z: jax.nn.sigmoid(m.decode(z)))(jnp.concatenate([zs, mu[None]]))
        err, ident = metrics.equivariance_error(m, x, 0), metrics.equivariance_error_identity(m, x)
        sums, counts = metrics.linear_shift_sums(m, sequences, jnp.array([0, 0, 2]), 3)
        mus = jax.vmap(jax.vmap(lambda f: m.encode(f)[0]))(sequences[:2])
        return means, err, ident, sums, counts, mus

    means, err, ident, sums, counts, mus = pieces(model)
    np.testing.assert_allclose(err, jnp.sum(jnp.abs(means[1:4] - x[1:])), rtol=1e-5)
    np.testing.assert_allclose(ident, jnp.sum(jnp.abs(means[4][None] - x[1:])), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[1\]"):
        metrics.linear_shifts(sums, counts)
    shifts = metrics.linear_shifts(sums, counts.at[1].set(1.0))
    np.testing.assert_allclose(shifts[0], jnp.mean(mus - mus[:, :1], axis=0), rtol=1e-4, atol=1e-6)
    lin = eqx.filter_jit(metrics.equivariance_error_linear)(model, x, 0, shifts)
    assert jnp.isfinite(lin)


def test_public_model_functions_jit_and_vmap(model, weak_model, sequences, getkey):
    keys = jr.split(getkey(), 3)
    ks = jnp.arange(3)
    mus, _ = eqx.filter_jit(lambda x: jax.vmap(model.encode)(x))(sequences[:, 0])
    assert eqx.filter_jit(lambda z: jax.vmap(model.decode)(z))(mus).shape == (3, 3, 28, 28)
    assert eqx.filter_jit(jax.vmap(lambda k, z: model.transport(k, z)))(ks, mus).shape == (3, 4, 6)
    assert eqx.filter_jit(jax.vmap(lambda w, z: model.compose(w, z)))(jnp.eye(3), mus).shape == (3, 4, 6)
    losses, _ = eqx.filter_jit(jax.vmap(lambda x, k, key: model.loss(x, k, key=key)))(sequences, ks, keys)
    weak, _ = eqx.filter_jit(jax.vmap(lambda x, key: weak_model.weak_loss(x, key=key)))(sequences, keys)
    errs = eqx.filter_jit(jax.vmap(lambda x, k: metrics.equivariance_error(model, x, k)))(sequences, ks)
    lls, _ = eqx.filter_jit(jax.vmap(lambda x, k, key: metrics.log_likelihood(model, x, k, key=key, num_samples=4)))(
        sequences, ks, keys
    )
    logp = eqx.filter_jit(lambda k, z: jax.vmap(model.prior_log_prob, in_axes=(0, None, 0))(k, 2.0, z))(ks, mus)
    assert losses.shape == weak.shape == errs.shape == logp.shape == (3,) and lls.shape == (3, 4)
    assert jnp.all(jnp.isfinite(lls))


def test_hutchinson_model_loss_runs(sequences, getkey):
    cfg = ff.FFVAEConfig(**{**CONFIG.__dict__, "laplacian": "hutchinson", "num_probes": 2})
    m = ff.FlowFactorizedVAE(cfg, key=getkey())
    loss, _ = eqx.filter_jit(lambda m, x, key: m.loss(x, 0, key=key))(m, sequences[0], getkey())
    assert jnp.isfinite(loss)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="num_frames must be ≥ 2.*got 1"):
        ff.FFVAEConfig(num_frames=1)
    with pytest.raises(ValueError, match="30×30 images cannot go through"):
        ff.FlowFactorizedVAE(ff.FFVAEConfig(image_shape=(1, 30, 30)), key=jr.key(0))
    with pytest.raises(ValueError, match="128×100 images.*multiples of 4 when both are ≤ 64 px, of 16"):
        ff.FlowFactorizedVAE(ff.FFVAEConfig(image_shape=(1, 128, 100)), key=jr.key(0))
    with pytest.raises(ValueError, match="likelihood must be one of bernoulli, gaussian, got 'laplace'"):
        ff.pixels.pixel_likelihood("laplace", 3)  # what every config checks its `likelihood` with
    with pytest.raises(ValueError, match="σ must be a number > 0.*got -1"):
        ff.FFVAEConfig(likelihood="gaussian", pixel_scale=-1.0)
    with pytest.raises(ValueError, match="the Bernoulli likelihood has none"):
        ff.FFVAEConfig(pixel_scale=0.1)


def test_hj_collocation_does_not_move_encoder(model, sequences, getkey):
    """The HJ regulariser shapes the potentials only: its gradient never reaches the encoder."""
    key = getkey()

    def hj_only(m):
        return m.loss(sequences[0], 1, key=key)[1]["hj"]

    grads = eqx.filter_jit(eqx.filter_grad(hj_only))(model)
    assert all(jnp.all(g == 0) for g in jax.tree.leaves(grads.encoder))
    assert any(jnp.any(g != 0) for g in jax.tree.leaves(grads.flows.potentials))


def test_map_density_training_tracks_the_maps_log_determinant(getkey):
    """With density="map", `transport_density` (what `loss` uses) moves z by the Euler map and lowers
    log q by slogdet of `jax.jacrev` of that map at every step; the trace form of the same solve puts
    the same points lower (λ − log(1 + λ) ≥ 0 per eigenvalue). The training step then takes the
    model's own `batch_loss` (the batched path is the trace form's)."""
    config = ff.FFVAEConfig(**{**CONFIG.__dict__, "density": "map"})
    model = ff.methods.make_model("ffvae", config, key=jr.key(4))
    z0, logq0 = jr.normal(getkey(), (6,)), jnp.asarray(-3.0)
    pot = model.flows.potential(1)

    @eqx.filter_jit
    def solve(m, z, lq):
        trace = m.flow_settings.density(m.flows.potential(1), z, lq, m.frame_times, None)
        return m.transport_density(1, z, lq, m.frame_times), trace

    (zs, logqs), (trace_zs, trace_logqs) = solve(model, z0, logq0)

    @jax.jit
    def reference(z, logq, t):
        step = lambda v: v + jax.grad(lambda w: pot(t, w))(v)  # noqa: E731
        return step(z), logq - jnp.linalg.slogdet(jax.jacrev(step)(z))[1]

    z, logq = z0, logq0
    for t in range(CONFIG.num_frames - 1):
        z, logq = reference(z, logq, jnp.float32(t))
        np.testing.assert_allclose(zs[t + 1], z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logqs[t + 1], logq, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(trace_zs, zs, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(trace_logqs[1:]) < np.asarray(logqs[1:]))
