"""Latent flows: dz/dt = ∇u(t, z), d log q/dt = -Δu(t, z), one Diffrax solve (SPEC §3)."""

from __future__ import annotations

import math
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Key, PRNGKeyArray, PyTree, Scalar, ScalarLike

from .potentials import AbstractPotential, hvp_grad_and_laplacian

LaplacianMethod = Literal["exact", "hvp", "hessian", "hutchinson"]
_METHODS = ("exact", "hvp", "hessian", "hutchinson")
Divergence = Literal["exact", "hvp", "hessian", "hutchinson", "none"]
_DIVERGENCES = (*_METHODS, "none")


def velocity(pot: AbstractPotential, t: ScalarLike, z: Float[Array, " d"]) -> Float[Array, " d"]:
    """∇_z u(t, z): the velocity of the latent along this potential's flow."""
    return jax.grad(lambda x: pot(t, x))(z)


def hutchinson_probes(key: PRNGKeyArray, num_probes: int, dim: int, dtype=jnp.float32) -> Array:
    """Rademacher probes ε with E[εεᵀ] = I, drawn once and held fixed for a whole solve."""
    return jr.rademacher(key, (num_probes, dim), dtype=dtype)


def _grad_and_laplacian(
    pot: AbstractPotential,
    t: ScalarLike,
    z: Float[Array, " d"],
    method: Divergence,
    probes: Array | None,
) -> tuple[Float[Array, " d"], Scalar]:
    if method == "exact":
        return pot.grad_and_laplacian(t, z)
    if method == "none":
        return velocity(pot, t, z), jnp.zeros((), z.dtype)
    if method == "hvp":
        return hvp_grad_and_laplacian(lambda x: pot(t, x), z)
    if method == "hessian":
        u = lambda x: pot(t, x)  # noqa: E731
        return jax.grad(u)(z), jnp.trace(jax.hessian(u)(z))
    if method == "hutchinson":
        if probes is None:
            raise ValueError("the Hutchinson Laplacian needs probes: pass key=... to draw them")
        grads, hvps = jax.vmap(lambda e: jax.jvp(jax.grad(lambda x: pot(t, x)), (z,), (e,)))(probes)
        return grads[0], jnp.mean(jnp.sum(probes * hvps, axis=-1))
    raise ValueError(f"unknown Laplacian method {method!r}; use one of {_METHODS}")


def laplacian(
    pot: AbstractPotential,
    t: ScalarLike,
    z: Float[Array, " d"],
    *,
    method: str = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
) -> Scalar:
    """Δ_z u(t, z) = tr ∇²u: exact (the potential's fastest exact method), by d HVPs, as the trace of
    the full `jax.hessian` (the plain reference), or Hutchinson's estimator."""
    probes = None
    if method == "hutchinson":
        if key is None:
            raise ValueError("laplacian(method='hutchinson') needs key=... to draw its probes")
        probes = hutchinson_probes(key, num_probes, z.shape[0], z.dtype)
    return _grad_and_laplacian(pot, t, z, method, probes)[1]


def _fixed_grid_steps(ts: Array, dt0: float) -> int | None:
    try:
        span = float(np.asarray(ts[-1]) - np.asarray(ts[0]))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None
    return max(1, math.ceil(span / dt0 - 1e-6))


def flow(
    pot: AbstractPotential,
    z0: Float[Array, "*b d"],
    logq0: ScalarLike | Float[Array, " b"],
    ts: Float[Array, " n"],
    *,
    solver: diffrax.AbstractSolver | None = None,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    divergence: str = "exact",
    key: PRNGKeyArray | Key[Array, " b"] | None = None,
    num_probes: int = 1,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int | None = None,
    batch_axes: PyTree | None = None,
) -> tuple[Float[Array, "*b n d"], Float[Array, "*b n"]]:
    """Carry (z, log q) from ts[0] through every time in ts along ∇u.

    Returns the states `zs` (len(ts), d) and log-densities `logqs` (len(ts),) at `ts`.
    Default: Euler with dt0 = 1, i.e. exactly the paper's `z_t = z_{t-1} + ∇u(z_{t-1})` per frame.
    `divergence="none"` moves z only (log q stays at logq0), for models that need no density.

    `batch_axes` solves a batch as one ODE: z0 is (b, d), logq0 (b,), `key` one key per row, and
    the leaves of `pot` are split over rows as `batch_axes` says (an `eqx.filter_vmap` in_axes
    prefix of `pot`: 0 for one potential per row, e.g. `PotentialBank.row_potentials`); outputs
    gain a leading b. On a fixed grid it computes what vmapping `flow` over the rows does, but the
    reverse pass carries one gradient of the weights through the solve, not one per row.
    """
    if divergence not in _DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; use one of {_DIVERGENCES}")
    solver = diffrax.Euler() if solver is None else solver
    dt0 = 1.0 if dt0 is None else dt0
    stepsize_controller = diffrax.ConstantStepSize() if stepsize_controller is None else stepsize_controller
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    if max_steps is None:
        fixed = isinstance(stepsize_controller, diffrax.ConstantStepSize)
        max_steps = (_fixed_grid_steps(ts, dt0) if fixed else None) or 4096
    probes = None
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("flow(divergence='hutchinson') needs key=... to draw its probes")
        draw = lambda k: hutchinson_probes(k, num_probes, z0.shape[-1], z0.dtype)  # noqa: E731
        probes = draw(key) if batch_axes is None else jax.vmap(draw)(key)

    def one_row(p, t, z, probes):
        return _grad_and_laplacian(p, t, z, divergence, probes)

    if batch_axes is not None:
        one_row = eqx.filter_vmap(one_row, in_axes=(batch_axes, None, 0, None if probes is None else 0))

    def vector_field(t, y, probes):
        grad, lap = one_row(pot, t, y[0], probes)
        return grad, -lap

    logq0 = jnp.asarray(logq0, z0.dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=(z0, logq0),
        args=probes,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
    )
    zs, logqs = sol.ys
    if batch_axes is not None:
        zs, logqs = jnp.swapaxes(zs, 0, 1), jnp.swapaxes(logqs, 0, 1)
    return zs, logqs
