"""docs/method.md §3/§5 evaluation protocol: the Euler map's exact density, the mixture-proposal likelihood,
the probes beyond training (extrapolation, composition)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jss
import numpy as np
import pytest

import eqx_ffvae as ff
from eqx_ffvae import distributions as dist
from eqx_ffvae import flows, metrics
from eqx_ffvae.baselines import VAE, VAEConfig
from eqx_ffvae.data import transforms
from eqx_ffvae.potentials import MLPPotential

D = 5


@pytest.fixture(scope="module")
def pot():
    # Large enough weights that h∇²u has eigenvalues far from 0, so trace and log-det differ visibly.
    p = MLPPotential(D, 16, key=jr.key(0))
    return jax.tree.map(lambda x: 2.0 * x if eqx.is_inexact_array(x) else x, p)


def _composed_map(pot, num_frames, steps):
    return lambda z: flows.map_density(pot, z, 0.0, num_frames, steps).zs[-1]


@pytest.mark.parametrize("steps", [1, 3])
def test_map_log_density_is_slogdet_of_the_maps_jacobian(pot, steps):
    z0 = jr.normal(jr.key(1), (D,))
    path = flows.map_density(pot, z0, 0.3, 4, steps)
    jac = jax.jacrev(_composed_map(pot, 4, steps))(z0)
    sign, logdet = jnp.linalg.slogdet(jac)
    assert path.min_eigenvalue > 0 and sign > 0
    np.testing.assert_allclose(path.logqs[-1], 0.3 - logdet, rtol=1e-5, atol=1e-5)
    # The positions are those of the Euler solve of the ODE; its trace-form density is lower by the gap.
    zs, logqs = flows.flow(pot, z0, 0.3, flows.frame_times(4), dt0=1.0 / steps)
    np.testing.assert_allclose(path.zs, zs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(path.logqs - logqs, path.logdet_gap, rtol=1e-3, atol=1e-5)
    assert path.logdet_gap[-1] > 1e-3 and jnp.all(jnp.diff(path.logdet_gap) >= 0)


def test_map_step_eigenvalue_and_gap_match_the_hessian(pot):
    z, h = jr.normal(jr.key(2), (D,)), 0.5
    _, logdet, min_eig, trace = flows.map_step(pot, 0.7, z, h)
    hess = h * jax.hessian(lambda x: pot(0.7, x))(z)
    eig = jnp.linalg.eigvalsh(hess)
    np.testing.assert_allclose(min_eig, 1 + eig[0], rtol=1e-5)
    np.testing.assert_allclose(trace - logdet, jnp.sum(eig - jnp.log1p(eig)), rtol=1e-4, atol=1e-6)


def test_the_trace_form_converges_to_the_exact_density_as_steps_per_frame_grow(pot):
    """Both forms converge to the ODE's own density; the trace form's error is the gap, O(h)."""
    z0 = jr.normal(jr.key(3), (D,))
    fine = -jnp.linalg.slogdet(jax.jacrev(_composed_map(pot, 2, 256))(z0))[1]
    errors, gaps = [], []
    for steps in (1, 2, 4, 8):
        _, logqs = flows.flow(pot, z0, 0.0, flows.frame_times(2), dt0=1.0 / steps)
        errors.append(abs(float(logqs[-1] - fine)))
        gaps.append(float(flows.map_density(pot, z0, 0.0, 2, steps).logdet_gap[-1]))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert errors[-1] < errors[0] / 8


@pytest.mark.parametrize("steps", [1, 2])
def test_the_inverse_map_recovers_the_path_and_its_density(pot, steps):
    z0 = jr.normal(jr.key(4), (D,))
    path = flows.map_density(pot, z0, 0.0, 4, steps)
    log_q0 = lambda z: dist.gaussian_log_prob(z, jnp.zeros(D), jnp.zeros(D))  # noqa: E731
    for t in range(4):
        logq, residual = flows.map_log_density(pot, path.zs[t], t, log_q0, 4, steps)
        np.testing.assert_allclose(logq, log_q0(z0) + path.logqs[t], rtol=1e-4, atol=1e-4)
        assert residual < 1e-4


def test_the_mixture_estimate_is_unbiased_on_a_linear_gaussian_model():
    """z ~ N(0, 1), x | z ~ N(a z, s²): p(x) = N(0, a² + s²). Two poor proposals, drawn in fixed numbers,
    each draw weighted by its own component's density (what `log_likelihood` does)."""
    a, s, x = 2.0, 0.5, 1.3
    exact = jss.norm.logpdf(x, 0.0, jnp.sqrt(a**2 + s**2))
    own, frame = (0.0, 1.0), (1.0, 0.3)  # (mean, std) of each component; the posterior is N(0.61, 0.24)

    def estimate(key, num_own, num_frame):
        ko, kf = jr.split(key)
        z_own = own[0] + own[1] * jr.normal(ko, (num_own,))
        z_frame = frame[0] + frame[1] * jr.normal(kf, (num_frame,))
        z = jnp.concatenate([z_own, z_frame])
        log_q = jnp.concatenate([jss.norm.logpdf(z_own, *own), jss.norm.logpdf(z_frame, *frame)])
        log_w = jss.norm.logpdf(x, a * z, s) + jss.norm.logpdf(z)
        return metrics.importance_estimate((log_w - log_q)[:, None])

    for num_own, num_frame in ((2, 2), (3, 1), (1, 0)):
        est, ess = jax.vmap(lambda k: estimate(k, num_own, num_frame))(jr.split(jr.key(5), 200_000))  # noqa: B023 (called inside the loop)
        ratio = jnp.exp(est[:, 0] - exact)
        stderr = jnp.std(ratio) / jnp.sqrt(ratio.size)
        assert abs(float(jnp.mean(ratio)) - 1.0) < 4 * float(stderr) + 1e-3, (num_own, num_frame)
        assert jnp.all((ess >= 1 - 1e-4) & (ess <= num_own + num_frame + 1e-4))


@pytest.fixture(scope="module")
def small_models():
    shape = (3, 28, 28)
    ffvae = ff.FlowFactorizedVAE(
        ff.FFVAEConfig(image_shape=shape, num_frames=3, latent_dim=4, width=4, potential_width=8), key=jr.key(6)
    )
    vae = VAE(VAEConfig(image_shape=shape, num_frames=3, latent_dim=4, width=4), key=jr.key(7))
    return {"ffvae": ffvae, "vae": vae}


@pytest.mark.parametrize("name", ["ffvae", "vae"])
def test_one_sample_is_the_proposals_elbo_type_bound(small_models, name):
    """S = 1: one draw of the model's own proposal, log p(x|z) + log p_t(z) − log q_t(z), frame by frame."""
    model = small_models[name]
    x, k, key = jr.uniform(jr.key(8), (3, 3, 28, 28)), 1, jr.key(9)

    @eqx.filter_jit
    def both(m):
        ll, ess = metrics.log_likelihood(m, x, k, key=key, num_samples=1)
        zs, logqs = m.importance_proposal(x, k, key=jr.split(jr.split(key)[0], 1)[0])
        loglik = jax.vmap(m.proposal_log_likelihood)(zs, x)
        logp = jax.vmap(m.prior_log_prob, in_axes=(None, 0, 0))(k, flows.frame_times(3), zs)
        return ll, ess, loglik + logp - logqs

    ll, ess, by_hand = both(model)
    np.testing.assert_allclose(ll, by_hand, rtol=1e-6)
    np.testing.assert_allclose(ess, 1.0, rtol=1e-6)


def test_the_likelihood_weights_each_draw_by_its_own_component_even_where_the_map_folds(small_models):
    """S = 4 by hand: two draws of the FFVAE's own proposal (density carried along the map) and two of
    its encoder on x_t (the encoder's density). With potentials steep enough that I + h∇²u is not
    positive definite (the map folds, so it cannot be inverted), the estimate is still that, and finite."""
    steep = jax.tree.map(lambda x: 6.0 * x if eqx.is_inexact_array(x) else x, small_models["ffvae"].flows.potentials)
    model = eqx.tree_at(lambda m: m.flows.potentials, small_models["ffvae"], steep)
    x, k, key = jr.uniform(jr.key(10), (3, 3, 28, 28)), 1, jr.key(11)

    @eqx.filter_jit
    def both(m):
        ll, _ = metrics.log_likelihood(m, x, k, key=key, num_samples=4)
        own_key, frame_key = jr.split(key)
        zs, logq = jax.vmap(lambda kk: m.importance_proposal(x, k, key=kk))(jr.split(own_key, 2))
        keys = jr.split(frame_key, (2, 3))
        zf, logq_f = jax.vmap(jax.vmap(lambda xx, kk: m.frame_proposal(xx, key=kk)))(jnp.stack([x, x]), keys)
        zs, logq = jnp.concatenate([zs, zf]), jnp.concatenate([logq, logq_f])
        logw = jax.vmap(jax.vmap(m.proposal_log_likelihood), (0, None))(zs, x)
        logw += jax.vmap(jax.vmap(m.prior_log_prob, in_axes=(None, 0, 0)), in_axes=(None, None, 0))(
            k, flows.frame_times(3), zs
        )
        fold = m.map_density(k, zs[0, 0], 0.0, m.proposal_steps_per_frame).min_eigenvalue
        return ll, jax.nn.logsumexp(logw - logq, axis=0) - jnp.log(4.0), fold

    ll, by_hand, fold = both(model)
    assert fold < 0, "the test needs a folding map"
    assert jnp.all(jnp.isfinite(ll))
    np.testing.assert_allclose(ll, by_hand, rtol=1e-5)


class _WideFrameEncoder(ff.FlowFactorizedVAE):
    """The FFVAE with its encoder's σ raised in the frame proposal only: by e^200 (the draws overflow
    float32) on bright frames, by e^50 elsewhere (prior 0 in float32, z² overflowing)."""

    def frame_proposal(self, x, *, key):
        mu, logvar = self.encode(x)
        return dist.gaussian_draw(mu, logvar + jnp.where(jnp.mean(x) > 0.5, 400.0, 100.0), key)


def test_a_draw_that_overflows_float32_has_weight_zero_not_nan():
    """An encoder wide enough that its draws overflow (seen on frames unlike its training data) must
    not make log p(x) NaN: those draws sit where the prior is 0, and the estimate is the own half's."""
    config = ff.FFVAEConfig(image_shape=(3, 28, 28), num_frames=3, latent_dim=4, width=4, potential_width=8)
    model = _WideFrameEncoder(config, key=jr.key(6))
    x, k, key = jr.uniform(jr.key(8), (3, 3, 28, 28)), 0, jr.key(9)
    x = x.at[0].set(0.3).at[1].set(0.9).at[2].set(0.1)

    @eqx.filter_jit
    def both(m):
        ll, _ = metrics.log_likelihood(m, x, k, key=key, num_samples=4)
        zs, logq = jax.vmap(lambda kk: m.importance_proposal(x, k, key=kk))(jr.split(jr.split(key)[0], 2))
        logw = jax.vmap(jax.vmap(m.proposal_log_likelihood), (0, None))(zs, x) - logq
        logw += jax.vmap(jax.vmap(m.prior_log_prob, in_axes=(None, 0, 0)), in_axes=(None, None, 0))(
            k, flows.frame_times(3), zs
        )
        return ll, jax.nn.logsumexp(logw, axis=0) - jnp.log(4.0)

    z, logq = dist.gaussian_draw(jnp.zeros(4), jnp.full(4, 400.0), jr.key(1))
    assert not jnp.all(jnp.isfinite(z)) and jnp.isfinite(logq)
    ll, own_only = both(model)
    assert jnp.all(jnp.isfinite(ll))
    np.testing.assert_allclose(ll, own_only, rtol=1e-5)


def test_a_wide_gaussian_has_a_finite_log_density():
    """logvar 150: (z − μ)² overflows and e^{−logvar} underflows in float32; their product must not be NaN."""
    z, mu, logvar = jnp.full(3, 1e30), jnp.zeros(3), jnp.full(3, 150.0)
    expected = -0.5 * 3 * (np.log(2 * np.pi) + 150.0 + (1e30 * np.exp(-75.0)) ** 2)
    np.testing.assert_allclose(dist.gaussian_log_prob(z, mu, logvar), expected, rtol=1e-5)


def test_the_likelihood_converges_in_the_number_of_samples(small_models):
    """The estimate at S = 16 and S = 256 agrees to well under a nat on a frame the encoder knows."""
    model = small_models["vae"]
    x = jr.uniform(jr.key(12), (3, 3, 28, 28))
    estimate = eqx.filter_jit(lambda m, s: metrics.log_likelihood(m, x, 0, key=jr.key(13), num_samples=s))
    (small, _), (large, ess) = estimate(model, 16), estimate(model, 256)
    assert jnp.all(jnp.abs(small - large) < 1.0) and jnp.all(ess > 1)


def test_probe_ground_truth_continues_the_grid_and_composes():
    image = transforms.colourise(np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28))
    probes = transforms.mnist_probe_frames(image, 1, 9)
    assert probes["extrapolation"].shape == (8, 3, 28, 28) and probes["composition"].shape == (3, 9, 3, 28, 28)
    np.testing.assert_allclose(probes["extrapolation"][0], transforms.affine(image, np.array([90.0]), np.ones(1))[0])
    # Frame 0 of every pair is the image; scale+rotation at t is one warp of both values.
    np.testing.assert_allclose(probes["composition"][:, 0], np.broadcast_to(image, (3, *image.shape)), atol=1e-6)
    np.testing.assert_allclose(
        probes["composition"][0, 3], transforms.affine(image, np.array([30.0]), np.array([1.3]))[0], atol=1e-6
    )
    hue_then = transforms.adjust_hue(transforms.affine(image, np.array([50.0]), np.ones(1))[0], np.array([100.0]))[0]
    np.testing.assert_allclose(probes["composition"][2, 5], hue_then, atol=1e-6)
    with pytest.raises(ValueError, match="start at t = 0"):
        transforms.mnist_values(0, np.array([-1]))


def test_continued_shifts_keep_the_last_step():
    shifts = jnp.cumsum(jnp.ones((2, 4, 3)), axis=1) - 1.0  # Δ_t = t
    np.testing.assert_allclose(metrics.continued_shifts(shifts, 3)[:, :, 0], [[4.0, 5.0, 6.0]] * 2)


def test_a_likelihood_past_one_chunk_averages_every_chunks_weights(small_models, monkeypatch):
    """S above `LIKELIHOOD_CHUNK` is drawn in chunks: at S = 8 with chunks of 4 the estimate is the mean of
    the two chunks' weights, log((e^{l_1} + e^{l_2}) / 2) with l_i the S = 4 estimate of chunk i's key;
    at S = 7 (two chunks of 4, the last draw dropped) its ESS stays within [1, 7]."""
    monkeypatch.setattr(metrics, "LIKELIHOOD_CHUNK", 4)
    model = small_models["vae"]
    x, key = jr.uniform(jr.key(21), (3, 3, 28, 28)), jr.key(22)
    estimate = lambda s, kk: metrics.log_likelihood(model, x, 1, key=kk, num_samples=s)  # noqa: E731
    whole, ess = estimate(8, key)
    parts = jnp.stack([estimate(4, kk)[0] for kk in jr.split(key, 2)])
    np.testing.assert_allclose(whole, jax.nn.logsumexp(parts, axis=0) - jnp.log(2.0), rtol=1e-5)
    assert jnp.all((ess >= 1 - 1e-4) & (ess <= 8 + 1e-4))
    seven, ess7 = estimate(7, key)
    assert jnp.all(jnp.isfinite(seven)) and jnp.all((ess7 >= 1 - 1e-4) & (ess7 <= 7 + 1e-4))


def test_the_changed_pixel_error_counts_only_the_pixels_that_moved(small_models):
    """`pixels="changed"` sums |sigmoid(dec(z_t)) − x_t| over the pixels where some channel moved by more
    than the threshold from x_0: a frame equal to x_0 contributes nothing, and the sum is the full
    error's restricted to that mask."""
    model = small_models["vae"]
    x0 = jr.uniform(jr.key(23), (3, 28, 28))
    moved = x0.at[:, :10].set(1.0 - x0[:, :10])  # the top rows move (by > 0.1 where |1 − 2x| > 0.1)
    x = jnp.stack([x0, x0, moved])
    mask = np.asarray(metrics.changed_pixels(x))
    expected = (
        np.max(np.abs(np.asarray(x) - np.asarray(x0)[None]), axis=1, keepdims=True) > metrics.CHANGED_PIXEL_THRESHOLD
    )
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, x.shape).astype(np.float32))
    assert mask[:2].sum() == 0 and 0 < mask[2].sum() < mask[2].size
    mu, _ = model.encode(x0)
    means = np.asarray(jax.nn.sigmoid(model.decode(mu)))
    by_hand = np.sum(np.abs(means - np.asarray(moved)) * mask[2])
    changed = metrics.equivariance_error_identity(model, x, pixels="changed")
    np.testing.assert_allclose(changed, by_hand, rtol=1e-5)
    assert changed < metrics.equivariance_error_identity(model, x)
    with pytest.raises((ValueError, TypeError), match="some"):  # the type checker under tests, else ours
        metrics.equivariance_error_identity(model, x, pixels="some")


def test_evaluate_scores_the_likelihood_on_the_first_sequences_whatever_the_batches(small_models):
    """The likelihood of sequence i uses its own key (`fold_in(key, i)`), so batches of 4 or of 2 + 2 give
    the same per-sequence numbers; only the first `likelihood_sequences` get one, and the drift check
    scores the first `drift_sequences` of them again with more draws."""
    from eqx_ffvae.evaluation import evaluate

    model = small_models["vae"]
    frames = jr.uniform(jr.key(24), (4, 3, 3, 28, 28))
    ks = jnp.array([0, 1, 0, 1])
    shifts = jnp.zeros((2, 3, 4))
    run = lambda batches: evaluate(  # noqa: E731
        model,
        batches,
        shifts,
        transform_names=("a", "b"),
        key=jr.key(25),
        num_samples=3,
        likelihood_sequences=3,
        drift_samples=6,
        drift_sequences=2,
    )
    one = run([{"frames": frames, "k": ks}])
    two = run([{"frames": frames[:2], "k": ks[:2]}, {"frames": frames[2:], "k": ks[2:]}])
    assert len(one["per_sequence"]["log_likelihood"]) == 3 and len(one["per_sequence"]["k"]) == 4
    np.testing.assert_allclose(one["per_sequence"]["log_likelihood"], two["per_sequence"]["log_likelihood"], rtol=1e-5)
    assert one["transformations"]["a"]["num_likelihood_sequences"] == 2
    drift = one["likelihood_drift"]
    assert (drift["samples"], drift["sequences"]) == (6, 2)
    np.testing.assert_allclose(
        drift["log_likelihood_at_num_samples"], np.mean(one["per_sequence"]["log_likelihood"][:2]), rtol=1e-5
    )
    assert drift["mean_abs_difference"] <= drift["max_abs_difference"]
    assert (
        0
        < one["transformations"]["b"]["equivariance_error_changed"]
        < one["transformations"]["b"]["equivariance_error"]
    )
    with pytest.raises(ValueError, match="likelihood_sequences must be in \\[1, 4\\].*got 5"):
        evaluate(
            model,
            [{"frames": frames, "k": ks}],
            shifts,
            transform_names=("a", "b"),
            key=jr.key(0),
            likelihood_sequences=5,
        )
    with pytest.raises(ValueError, match="drift_samples > num_samples = 3 \\(got 2\\)"):
        evaluate(
            model,
            [{"frames": frames, "k": ks}],
            shifts,
            transform_names=("a", "b"),
            key=jr.key(0),
            num_samples=3,
            drift_samples=2,
        )


def test_eval_settings_name_the_bad_likelihood_option():
    from eqx_ffvae.runs import EvalSettings, RunError

    with pytest.raises(RunError, match="--ll-sequences must be an integer in \\[1, --eval-sequences = 50\\], got 60"):
        EvalSettings(eval_sequences=50, ll_sequences=60)
    with pytest.raises(RunError, match="--drift-samples must be 0 .* above --ll-samples = 100, got 100"):
        EvalSettings(drift_samples=100)
    with pytest.raises(RunError, match="drift check's 20 sequences exceed the 10"):
        EvalSettings(ll_sequences=10, drift_samples=1000)
    assert ff.runs.resolve("mnist-medium", eval_sequences=50).eval.ll_sequences is None
    table = ff.runs.resolve("mnist-medium").eval
    assert (table.ll_samples, table.ll_sequences, table.drift_samples, table.drift_sequences) == (100, 100, 1000, 20)
