"""How a batch is laid out in memory: slices of sequences whose flows are one ODE, and sums over slices
whose gradient is taken inside the loop. Memory and speed only, never the numbers (tests check both
values and gradients against the single-example definitions).

* `Layout(slice_size)`: the one static object a training step passes to `batch_loss(..., layout=)`;
  `default_slice_size` picks its size from the backend (`make_step` and `runs.resolve` use it).
* `flow_rows`: the flows of a slice of sequences (row i along its own potential) as ONE ODE, so the
  potentials' gradient is summed over sequences at each step rather than kept per row;
  `row_potentials` selects the row potentials inside a checkpoint, so their per-row copies live only
  while a slice is solved.
* `sum_over_slices`: Σ_i f(module, zs[i], xs[i]) whose gradient is taken slice by slice: the backward
  pass keeps no activation of f and recomputes nothing (the decoder's summed likelihood).

A model decides what it lays out (`FlowFactorizedVAE.batch_loss`); this module reads no model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, Key, PyTree, Scalar

from .flows import FlowSettings, hutchinson_probes, integrate, velocity_and_laplacian
from .potentials import AbstractPotential, PotentialBank, select_stacked

SliceFn = Callable[[PyTree, PyTree[Array], PyTree[Array]], Scalar]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a training step lays a batch out: `slice_size` sequences per flow slice and decoder chunk."""

    slice_size: int

    def __post_init__(self):
        if isinstance(self.slice_size, bool) or not isinstance(self.slice_size, int) or self.slice_size < 1:
            raise ValueError(f"slice_size must be an integer ≥ 1 (sequences per slice), got {self.slice_size!r}")

    def rows(self, batch: int) -> int:
        """Rows per slice of a batch of `batch` sequences (`slice_rows`)."""
        return slice_rows(batch, self.slice_size)


CPU_SLICE_SIZE = 16
"""Sequences per slice on a CPU, where slices sized to the caches are fastest (docs/performance.md)."""


def default_slice_size(batch_size: int, backend: str | None = None) -> int:
    """The slice size when none is given: `CPU_SLICE_SIZE` on a CPU, the whole batch on an accelerator
    (docs/performance.md has the measurements). `backend` defaults to jax's."""
    backend = jax.default_backend() if backend is None else backend
    return CPU_SLICE_SIZE if backend == "cpu" else batch_size


def row_potentials(bank: PotentialBank, ks: Int[Array, " b"]) -> AbstractPotential:
    """Potential ks[i] for each row i, stacked on a leading axis (what `flow_rows` takes).

    Selected once per call and rematerialised in the backward pass rather than saved, so these
    per-row copies of the weights exist only while one slice of the batch is being solved.
    """
    select = eqx.filter_checkpoint(lambda ks: jax.vmap(lambda k: select_stacked(bank.potentials, k))(ks))
    return select(ks)


def flow_rows(
    pots: AbstractPotential,
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
