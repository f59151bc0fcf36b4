"""The training step's fast path: the same numbers as the single-example definitions, laid out for memory.

`batched_loss(model, frames, ks, *, key, step, slice_size)` is the one function the training step
calls. For a supervised FFVAE it computes the mean of `FlowFactorizedVAE.loss` over the batch (values
and gradients; tests check both) as follows:

* the flows of `slice_size` sequences at a time are ONE ODE over the rows (`flow_rows`), so the
  potentials' gradient is summed over sequences at each step rather than kept per row;
* the row potentials are selected inside a checkpoint, so their per-row copies live only while a
  slice is solved;
* the decoder's likelihood is a sum over slices of frames whose gradient is taken inside the loop
  (`sum_over_slices`): the backward pass keeps no decoder activation and recomputes nothing.

A weakly supervised FFVAE gets this path for its M-step (its E-step is the model's own); every other
model, an FFVAE whose density is the Euler map's (`density="map"`) and one on the path-space objective
(`objective="path"`, `ffvae-sde`) train on their own `batch_loss` (the mean of `loss`, tested equal
through this door). The path objective is not laid out in slices: each row's posterior is an SDE
driven by its own Brownian path, which the one-ODE-over-rows solve (`flow_rows`) does not carry
(its cost against the other objectives: docs/performance.md). `slice_size` changes memory and speed, never the result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from einops import rearrange
from jaxtyping import Array, ArrayLike, Float, Int, Key, PRNGKeyArray, PyTree, Scalar

from .flows import FlowSettings, hutchinson_probes, integrate, velocity_and_laplacian
from .interfaces import AbstractSequenceModel, Terms
from .model import FlowFactorizedVAE
from .nn import ConvDecoder, channels_last, feature_log_likelihood
from .potentials import MLPPotential, PotentialBank, select_stacked

SliceFn = Callable[[PyTree, PyTree[Array], PyTree[Array]], Scalar]


def batched_loss(
    model: AbstractSequenceModel,
    frames: Float[Array, "b n c h w"],
    ks: Int[Array, " b"],
    *,
    key: PRNGKeyArray,
    step: Int[ArrayLike, ""] | None,
    slice_size: int,
) -> tuple[Scalar, Terms]:
    """`model.batch_loss(frames, ks, key=key, step=step)`, computed in slices of `slice_size` sequences
    where the model has a laid-out equal (the FFVAE's supervised loss, also the weak M-step)."""
    if slice_size < 1:
        raise ValueError(f"slice_size must be ≥ 1 sequence, got {slice_size}")
    c = model.config if isinstance(model, FlowFactorizedVAE) else None
    if c is not None and not c.group_supervised and c.objective == "marginal" and model.density == "trace":
        supervised = functools.partial(_ffvae_supervised, model, slice_size=slice_size)
        if model.config.weakly_supervised:
            return model.weak_batch_loss(frames, key=key, supervised=lambda f, k, kk: supervised(f, k, key=kk))
        return supervised(frames, ks, key=key)
    return model.batch_loss(frames, ks, key=key, step=step)


def _ffvae_supervised(
    model: FlowFactorizedVAE,
    frames: Float[Array, "b n c h w"],
    ks: Int[Array, " b"],
    *,
    key: PRNGKeyArray,
    slice_size: int,
) -> tuple[Scalar, Terms]:
    """The mean of `model.loss` over the batch (key split into one per sequence)."""
    b, n = frames.shape[:2]
    keys = jr.split(key, b)
    mu, logvar, z0, logq0, probe_keys = jax.vmap(model.sample_z0)(frames[:, 0], keys)
    rows = slice_rows(b, slice_size)

    def solve(ks, z0, logq0, keys):
        pots = row_potentials(model.flows, ks)
        return flow_rows(pots, z0, logq0, model.frame_times, settings=model.flow_settings, keys=keys)

    by_rows = lambda a: rearrange(a, "(s r) ... -> s r ...", r=rows)  # noqa: E731
    zs, logqs = jax.tree.map(
        lambda a: rearrange(a, "s r ... -> (s r) ..."),
        jax.lax.map(lambda a: solve(*a), jax.tree.map(by_rows, (ks, z0, logq0, probe_keys))),
    )
    terms = jax.vmap(model.latent_terms)(mu, logvar, zs, logqs, ks)
    by_slice = lambda a: rearrange(a, "(s r) n ... -> s (r n) ...", r=rows)  # noqa: E731
    recon = summed_log_likelihood(model.decoder, by_slice(zs), by_slice(frames), frames_per_slice=rows)
    return model.objective(recon / b, jax.tree.map(jnp.mean, terms))


def row_potentials(bank: PotentialBank, ks: Int[Array, " b"]) -> MLPPotential:
    """Potential ks[i] for each row i, stacked on a leading axis (what `flow_rows` takes).

    Selected once per call and rematerialised in the backward pass rather than saved, so these
    per-row copies of the weights exist only while one slice of the batch is being solved.
    """
    select = eqx.filter_checkpoint(lambda ks: jax.vmap(lambda k: select_stacked(bank.potentials, k))(ks))
    return select(ks)


def flow_rows(
    pots: MLPPotential,
    z0: Float[Array, "b d"],
    logq0: Float[Array, " b"],
    ts: Float[ArrayLike, " n"],
    *,
    settings: FlowSettings,
    keys: Key[Array, " b"] | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
) -> tuple[Float[Array, "b n d"], Float[Array, "b n"]]:
    """`jax.vmap(flow)` over b rows (row i along potential i of the stacked `pots`), as ONE ODE.

    On a fixed grid it computes what the vmap computes, but the reverse pass carries one gradient of
    the weights through the solve, not one per row. An adaptive step-size controller would make the
    rows share steps, which the per-example definition does not: it is refused.
    """
    if stepsize_controller is not None and not isinstance(stepsize_controller, diffrax.ConstantStepSize):
        raise ValueError(
            f"the batched flow solve needs a fixed grid (diffrax.ConstantStepSize), got {type(stepsize_controller).__name__}: "
            "with an adaptive controller the rows would share step sizes and differ from vmap(flow); "
            "vmap `flows.flow` over the examples instead"
        )
    divergence = settings.divergence
    probes = None
    if divergence == "hutchinson":
        if keys is None:
            raise ValueError("flow_rows(divergence='hutchinson') needs keys=... (one per row) to draw its probes")
        probes = jax.vmap(lambda k: hutchinson_probes(k, settings.num_probes, z0.shape[-1], z0.dtype))(keys)

    def one_row(p, t, z, probes):
        return velocity_and_laplacian(p, t, z, divergence, probes)

    rows = eqx.filter_vmap(one_row, in_axes=(0, None, 0, None if probes is None else 0))

    def vector_field(t, y, probes):
        grad, lap = rows(pots, t, y[0], probes)
        return grad, -lap

    zs, logqs = integrate(
        vector_field, z0, logq0, probes, ts, dt0=settings.dt0, stepsize_controller=stepsize_controller
    )
    return jnp.swapaxes(zs, 0, 1), jnp.swapaxes(logqs, 0, 1)


def summed_log_likelihood(
    decoder: ConvDecoder, zs: Float[Array, "m b d"], xs: Float[Array, "m b c h w"], frames_per_slice: int
) -> Scalar:
    """Σ over all m·b frames of log p(x | z), for training, with gradients taken inside the loops.

    `features` runs on b frames at a time (its weight gradient is one GEMM over b rows), the
    spatial layers on `frames_per_slice` of those at a time (the largest divisor of b up to it).
    Each loop takes its gradient slice by slice (`sum_over_slices`), so the backward pass keeps no
    decoder activation at all, and nothing is recomputed.
    """
    chunk = functools.partial(_chunk_log_likelihood, frames_per_slice=frames_per_slice)
    return sum_over_slices(chunk, decoder, zs, channels_last(xs))


def _chunk_log_likelihood(
    decoder: ConvDecoder, zs: Float[Array, "b d"], xs: Float[Array, "b h w c"], frames_per_slice: int
) -> Scalar:
    rows = slice_rows(zs.shape[0], frames_per_slice)
    split = lambda a: rearrange(a, "(s r) ... -> s r ...", r=rows)  # noqa: E731
    features = jax.vmap(decoder.features)(zs)
    return sum_over_slices(_slice_log_likelihood, decoder.deconvs[1:], split(features), split(xs))


def _slice_log_likelihood(deconvs: tuple, features: Array, xs: Float[Array, "b h w c"]) -> Scalar:
    return jnp.sum(jax.vmap(functools.partial(feature_log_likelihood, deconvs))(features, xs))


def slice_rows(batch: int, slice_size: int) -> int:
    """The largest divisor of `batch` that is at most `slice_size`: rows per slice."""
    return max(r for r in range(1, min(batch, slice_size) + 1) if batch % r == 0)


def sum_over_slices(f: SliceFn, module: PyTree, zs: PyTree[Array], xs: PyTree[Array]) -> Scalar:
    """Σ_i f(module, zs[i], xs[i]) over the leading axis, differentiable in `module` (any PyTree of
    modules or arrays) and `zs`.

    Reverse mode keeps what every slice's backward pass needs until the whole backward pass runs. For
    a plain sum over slices the gradient of each slice can be taken as soon as the slice is
    evaluated: the loop then carries only the running gradient, and the custom VJP scales it by the
    incoming cotangent. Forward and backward arithmetic are those of plain reverse mode; only when
    they happen changes. Without differentiation it is a plain loop; `xs` gets no gradient.
    First-order gradients only.
    """
    return _sum_over_slices((module, zs), xs, f)


@eqx.filter_custom_vjp
def _sum_over_slices(module_and_zs, xs, f):
    module, zs = module_and_zs
    values = jax.lax.map(lambda zx: f(module, *zx), (zs, xs))
    return jnp.sum(values)


@_sum_over_slices.def_fwd
def _sum_over_slices_fwd(perturbed, module_and_zs, xs, f):
    del perturbed
    module, zs = module_and_zs
    params, static = eqx.partition(module, eqx.is_inexact_array)
    value_and_grad = jax.value_and_grad(lambda p, z, x: f(eqx.combine(p, static), z, x), argnums=(0, 1))

    def body(carry, zx):
        total, grads = carry
        value, (g_params, g_z) = value_and_grad(params, *zx)
        return (total + value, jax.tree.map(jnp.add, grads, g_params)), g_z

    dtype = jnp.result_type(*jax.tree.leaves(params))
    init = (jnp.zeros((), dtype), jax.tree.map(jnp.zeros_like, params))
    (total, g_params), g_zs = jax.lax.scan(body, init, (zs, xs))
    return total, (g_params, g_zs)


@_sum_over_slices.def_bwd
def _sum_over_slices_bwd(residuals, g_total, perturbed, module_and_zs, xs, f):
    del module_and_zs, xs, f
    scaled = jax.tree.map(lambda a: g_total * a, residuals)
    return jax.tree.map(lambda p, g: g if p else None, perturbed, scaled)
