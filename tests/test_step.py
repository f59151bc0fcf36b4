"""The laid-out training loss (`layout`, `batch_loss(layout=...)`) computes the same function as the single-example definitions; the
training step's precision option."""

import dataclasses
import re

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_ffvae as ff
from eqx_ffvae import layout
from eqx_ffvae.flows import FlowSettings
from eqx_ffvae.layout import Layout
from eqx_ffvae.training import FlatStep, make_optimizer, make_step

FAST = ff.FFVAEConfig(
    image_shape=(3, 28, 28), num_frames=4, latent_dim=8, num_flows=3, width=8, potential_width=16, hj_weight=1.0
)
PLAIN = dataclasses.replace(FAST, conv_impl="lax", laplacian="hessian")


def test_fast_step_equals_plain_step(getkey):
    """Fast convs (matmuls, sub-pixel transposed conv) + forward-mode Laplacian vs `lax.conv` + the
    trace of `jax.hessian`: same parameters, same batch and key → same loss and gradients."""
    init_key = getkey()
    fast, plain = ff.FlowFactorizedVAE(FAST, key=init_key), ff.FlowFactorizedVAE(PLAIN, key=init_key)
    batch = {"frames": jr.uniform(getkey(), (3, 4, 3, 28, 28)), "k": jnp.array([0, 1, 2])}
    key = getkey()

    def batch_loss(model, batch, key):
        return model.batch_loss(batch["frames"], batch["k"], key=key, step=None, layout=Layout(16))

    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(batch_loss, has_aux=True))
    (loss_f, terms_f), grads_f = value_and_grad(fast, batch, key)
    (loss_p, terms_p), grads_p = value_and_grad(plain, batch, key)
    np.testing.assert_allclose(loss_f, loss_p, rtol=1e-4)
    for name in terms_p:
        np.testing.assert_allclose(terms_f[name], terms_p[name], rtol=1e-4, atol=1e-6, err_msg=name)
    leaves_f = jax.tree.leaves(eqx.filter(grads_f, eqx.is_inexact_array))
    paths_p, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(grads_p, eqx.is_inexact_array))
    assert len(leaves_f) == len(paths_p) > 20
    for g_f, (path, g_p) in zip(leaves_f, paths_p):
        assert float(jnp.linalg.norm(g_p)) > 0, jax.tree_util.keystr(path)
        rel = float(jnp.linalg.norm(g_f - g_p) / jnp.linalg.norm(g_p))
        assert rel < 1e-4, (jax.tree_util.keystr(path), rel)


def test_batched_loss_is_the_mean_of_per_sequence_losses(getkey):
    """`batch_loss(layout=...)` (flows solved per slice as one ODE; decoder gradient taken inside its
    loop by a custom VJP) = the mean of the per-sequence `loss` over the batch, for the loss, every
    term and every gradient leaf; slices of 2 sequences and Hutchinson probes (one key per sequence)."""
    config = dataclasses.replace(FAST, laplacian="hutchinson")
    model = ff.FlowFactorizedVAE(config, key=getkey())
    frames, ks, key = jr.uniform(getkey(), (4, 4, 3, 28, 28)), jnp.array([2, 0, 1, 2]), getkey()

    def per_sequence(model):
        losses, terms = jax.vmap(lambda x, k, kk: model.loss(x, k, key=kk))(frames, ks, jr.split(key, 4))
        return jnp.mean(losses), jax.tree.map(jnp.mean, terms)

    def batched(model):
        return model.batch_loss(frames, ks, key=key, step=None, layout=Layout(2))

    (loss_p, terms_p), grads_p = eqx.filter_jit(eqx.filter_value_and_grad(per_sequence, has_aux=True))(model)
    (loss_b, terms_b), grads_b = eqx.filter_jit(eqx.filter_value_and_grad(batched, has_aux=True))(model)
    np.testing.assert_allclose(eqx.filter_jit(batched)(model)[0], loss_p, rtol=1e-5)
    np.testing.assert_allclose(loss_b, loss_p, rtol=1e-5)
    assert terms_b.keys() == terms_p.keys()
    for name in terms_p:
        np.testing.assert_allclose(terms_b[name], terms_p[name], rtol=1e-5, atol=1e-6, err_msg=name)
    paths_p, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(grads_p, eqx.is_inexact_array))
    leaves_b = jax.tree.leaves(eqx.filter(grads_b, eqx.is_inexact_array))
    assert len(leaves_b) == len(paths_p) > 20
    for g_b, (path, g_p) in zip(leaves_b, paths_p):
        rel = float(jnp.linalg.norm(g_b - g_p) / jnp.linalg.norm(g_p))
        assert rel < 1e-5, (jax.tree_util.keystr(path), rel)


def test_weak_batched_loss_equals_the_models_weak_batch_loss(getkey):
    """The weak M-step through the fast path = `weak_batch_loss` with the plain mean of `loss`."""
    model = ff.WeakFFVAE(dataclasses.replace(FAST, weakly_supervised=True), key=getkey())
    frames, key = jr.uniform(getkey(), (4, 4, 3, 28, 28)), getkey()
    ks = jnp.zeros(4, jnp.int32)
    plain = eqx.filter_jit(
        eqx.filter_value_and_grad(lambda m: m.batch_loss(frames, ks, key=key, step=None), has_aux=True)
    )
    fast = eqx.filter_jit(
        eqx.filter_value_and_grad(
            lambda m: m.batch_loss(frames, ks, key=key, step=None, layout=Layout(2)), has_aux=True
        )
    )
    (loss_p, terms_p), grads_p = plain(model)
    (loss_f, terms_f), grads_f = fast(model)
    np.testing.assert_allclose(loss_f, loss_p, rtol=1e-5)
    for name in terms_p:
        np.testing.assert_allclose(terms_f[name], terms_p[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for g_f, g_p in zip(
        jax.tree.leaves(eqx.filter(grads_f, eqx.is_inexact_array)),
        jax.tree.leaves(eqx.filter(grads_p, eqx.is_inexact_array)),
        strict=True,
    ):
        assert float(jnp.linalg.norm(g_f - g_p)) <= 1e-5 * float(jnp.linalg.norm(g_p)) + 1e-7


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_flow_rows_equals_vmap_of_flow(divergence, getkey):
    """One ODE over the rows (row i along potential ks[i]) = `jax.vmap(flow)`, states and densities,
    with one probe key per row for Hutchinson."""
    bank = ff.PotentialBank(3, 6, 16, key=getkey())
    ks, z0, logq0 = jnp.array([2, 0, 1, 2]), jr.normal(getkey(), (4, 6)), jr.normal(getkey(), (4,))
    keys, ts = jr.split(getkey(), 4), ff.frame_times(5)
    settings = FlowSettings(0.5, divergence, 2)
    zs, logqs = layout.flow_rows(layout.row_potentials(bank, ks), z0, logq0, ts, settings=settings, keys=keys)
    ref_zs, ref_logqs = jax.vmap(lambda k, z, lq, kk: settings.density(bank.potential(k), z, lq, ts, kk))(
        ks, z0, logq0, keys
    )
    np.testing.assert_allclose(zs, ref_zs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logqs, ref_logqs, rtol=1e-5, atol=1e-5)


def test_flow_rows_refuses_an_adaptive_controller(getkey):
    bank = ff.PotentialBank(2, 3, 8, key=getkey())
    with pytest.raises(ValueError, match="fixed grid.*got PIDController"):
        layout.flow_rows(
            layout.row_potentials(bank, jnp.array([0, 1])),
            jnp.zeros((2, 3)),
            jnp.zeros(2),
            ff.frame_times(3),
            settings=FlowSettings(),
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3),
        )


def test_sum_over_slices_vjp_equals_autodiff(getkey):
    """The in-loop gradient of Σ_i f(module, z_i, x_i) equals plain reverse mode, for the module and zs."""
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=getkey())
    zs, xs = jr.normal(getkey(), (4, 5, 3)), jr.normal(getkey(), (4, 5, 2))

    def f(m, z, x):
        return jnp.sum(jnp.tanh(jax.vmap(m)(z)) * x)

    def plain(m, zs):
        return jnp.sum(jax.vmap(lambda z, x: f(m, z, x))(zs, xs)) * 1.7

    def sliced(m, zs):
        return layout.sum_over_slices(f, m, zs, xs) * 1.7

    v_p, (gm_p, gz_p) = eqx.filter_value_and_grad(lambda a: plain(*a))((mlp, zs))
    v_s, (gm_s, gz_s) = eqx.filter_value_and_grad(lambda a: sliced(*a))((mlp, zs))
    np.testing.assert_allclose(v_s, v_p, rtol=1e-6)
    np.testing.assert_allclose(gz_s, gz_p, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        jax.tree.leaves(eqx.filter(gm_s, eqx.is_inexact_array)),
        jax.tree.leaves(eqx.filter(gm_p, eqx.is_inexact_array)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("precision", "hlo"), [("float32", "HIGHEST"), ("tensorfloat32", "HIGH"), ("bfloat16", "DEFAULT")]
)
def test_matmul_precision_reaches_every_dot(precision, hlo):
    model = ff.FlowFactorizedVAE(dataclasses.replace(FAST, width=4, latent_dim=4, potential_width=8), key=jr.key(0))
    optimizer = make_optimizer(1e-3)
    state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    batch = {"frames": jnp.zeros((2, 4, 3, 28, 28)), "k": jnp.array([0, 1])}
    text = make_step(optimizer, matmul_precision=precision).lower(model, state, batch, jr.key(0)).as_text()
    dots = re.findall(r"precision = \[(\w+), (\w+)\]", text) + re.findall(
        r"precision (\w+)>, #stablehlo<precision (\w+)>", text
    )
    assert len(dots) > 10
    assert {p for pair in dots for p in pair} == {hlo}


@pytest.mark.parametrize("method", ["vae", "factorvae"])
def test_flat_step_equals_the_equinox_step(method):
    """`FlatStep` (what the loop calls, on flat leaves) takes the same steps as `make_step`'s
    `eqx.filter_jit`: same losses and bit-identical parameters and optimiser state after two steps,
    for a plain and an adversarial model (two optimiser states); a model of another structure is
    refused by name."""
    from eqx_ffvae import runs

    spec = runs.resolve("quick", method=method, batch_size=4)
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, width=4, latent_dim=4, num_frames=3))
    model, optimizer, opt_state = runs.build(spec)
    step = make_step(optimizer, slice_size=2)

    def batch(i):
        frames = jr.uniform(jr.key(i), (4, spec.model.num_frames, 3, 28, 28))
        return {"frames": frames, "k": jnp.arange(4) % 3}

    copy = jax.tree.map(lambda x: x.copy() if eqx.is_array(x) else x, (model, opt_state))
    flat = FlatStep(step, *copy, batch(0), jr.key(0))
    leaves = flat.leaves(*copy)
    for i in range(2):
        model, opt_state, loss, _ = step(model, opt_state, batch(i), jr.key(i))
        leaves, flat_loss, _ = flat(leaves, batch(i), jr.key(i))
        assert float(loss) == float(flat_loss)
    expected = jax.tree.leaves(eqx.filter((model, opt_state), eqx.is_array))
    assert len(expected) == len(leaves) > 10
    for a, b in zip(expected, leaves):
        np.testing.assert_array_equal(a, b)
    assert eqx.tree_equal(flat.state(leaves), (model, opt_state))
    with pytest.raises(ValueError, match="another structure"):
        flat.leaves(model, None)


def test_unknown_precision_is_refused():
    with pytest.raises((ValueError, TypeError), match="fp8"):  # TypeError: the test suite's jaxtyping check
        make_step(make_optimizer(1e-3), matmul_precision="fp8")


def test_a_failed_solve_returns_nan_states_instead_of_raising():
    """`throw=False` (the default): an adaptive solve that runs out of steps gives NaN, which a loss
    turns non-finite and the training loop stops on; `throw=True` raises diffrax's error."""
    from eqx_ffvae import flows

    def field(t, y, args):
        return 10.0 * y[0], jnp.zeros_like(y[1])

    kwargs = dict(
        solver=diffrax.Tsit5(),
        dt0=0.1,
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
        max_steps=2,
    )
    zs, logqs = eqx.filter_jit(lambda z: flows.integrate(field, z, 0.0, None, jnp.array([0.0, 1.0]), **kwargs))(
        jnp.ones(3)
    )
    assert jnp.all(jnp.isnan(zs)) and jnp.all(jnp.isnan(logqs))
    with pytest.raises(Exception, match="max_steps"):
        eqx.filter_jit(lambda z: flows.integrate(field, z, 0.0, None, jnp.array([0.0, 1.0]), throw=True, **kwargs))(
            jnp.ones(3)
        )


@pytest.mark.parametrize("steps_per_frame", [1, 4])
def test_the_gradient_of_a_grid_solve_recomputes_no_step(steps_per_frame):
    """The backward pass of a fixed-grid solve evaluates the vector field once per Euler step (for its
    VJP) and never re-runs the forward from a checkpoint: every step's state is kept. Diffrax's default
    keeps ~sqrt(2·steps) of them (3 of 8) and recomputes the rest, which made the training step 13% slower."""
    from eqx_ffvae import flows

    calls = []

    def field(t, y, w):
        jax.debug.callback(lambda: calls.append(1))
        return -jnp.tanh(y[0]) * w, -jnp.sum(y[0])

    def loss(w):
        zs, logqs = flows.integrate(field, jnp.ones(3), 0.0, w, flows.frame_times(9), dt0=1 / steps_per_frame)
        return jnp.sum(zs) + jnp.sum(logqs)

    jax.block_until_ready(jax.jit(jax.grad(loss))(jnp.float32(0.5)))
    assert len(calls) == 2 * 8 * steps_per_frame


def test_a_run_lets_go_of_jax_caches_before_compiling_its_step(monkeypatch):
    """What a real run does for its peak memory (the suite turns it off to share programs): the
    programs compiled before the step are dropped from JAX's caches, the step compiles as before."""
    import jax.numpy as jnp

    from eqx_ffvae import training

    earlier = jax.jit(lambda x: x * 2)
    earlier(jnp.ones(3))
    assert earlier._cache_size() == 1
    monkeypatch.setattr(training, "CLEAR_CACHES_BEFORE_COMPILE", True)
    compiled, _, _ = training.trace_and_compile(jax.jit(lambda x: x + 1), jnp.ones(3))
    assert earlier._cache_size() == 0
    assert compiled(jnp.ones(3)).tolist() == [2.0, 2.0, 2.0]
