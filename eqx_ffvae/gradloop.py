"""A sum over slices whose gradient is computed in the same loop, so no slice's activations are kept.

Reverse mode keeps what every slice's backward pass needs until the whole backward pass runs. For a
loss that is a plain sum over slices (the decoder's likelihood over frames) the gradient of each
slice can be taken as soon as the slice is evaluated: the loop then carries only the running
gradient, and the custom VJP scales it by the incoming cotangent. Forward and backward arithmetic
are the same as plain reverse mode; only when they happen changes. First-order gradients only.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree, Scalar

SliceFn = Callable[[PyTree, PyTree[Array], PyTree[Array]], Scalar]


def sum_over_slices(f: SliceFn, module: PyTree, zs: PyTree[Array], xs: PyTree[Array]) -> Scalar:
    """Σ_i f(module, zs[i], xs[i]) over the leading axis, differentiable in `module` (any PyTree of
    modules or arrays) and `zs`.

    Without differentiation it is a plain loop. Under `jax.grad` the loop computes each slice's
    value and gradient together and keeps only their running sums; `xs` gets no gradient.
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


def slice_rows(batch: int, slice_size: int) -> int:
    """The largest divisor of `batch` that is at most `slice_size`: rows per slice."""
    return max(r for r in range(1, min(batch, slice_size) + 1) if batch % r == 0)
