"""Latent flows: dz/dt = ∇u(t, z), d log q/dt = -Δu(t, z), one Diffrax solve per example (SPEC §3)."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

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


def velocity_and_laplacian(
    pot: AbstractPotential,
    t: ScalarLike,
    z: Float[Array, " d"],
    method: Divergence,
    probes: Array | None,
) -> tuple[Float[Array, " d"], Scalar]:
    """(∇u, Δu) at one (t, z) by `method`; "none" gives Δu = 0, "hutchinson" averages over `probes`."""
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
    return velocity_and_laplacian(pot, t, z, method, probes)[1]


def _fixed_grid_steps(ts: Array, dt0: float) -> int | None:
    try:
        span = float(np.asarray(ts[-1]) - np.asarray(ts[0]))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None
    return max(1, math.ceil(span / dt0 - 1e-6))


def frame_times(num_frames: int) -> Float[Array, " n"]:
    """The integer times 0, 1, …, T at which the frames of a sequence sit (one unit of flow time each)."""
    return jnp.arange(num_frames, dtype=jnp.float32)


def flow(
    pot: AbstractPotential,
    z0: Float[Array, " d"],
    logq0: ScalarLike,
    ts: Float[Array, " n"],
    *,
    solver: diffrax.AbstractSolver | None = None,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    divergence: str = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int | None = None,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """Carry (z, log q) of ONE latent from ts[0] through every time in ts along ∇u.

    Returns the states `zs` (len(ts), d) and log-densities `logqs` (len(ts),) at `ts`.
    Default: Euler with dt0 = 1, i.e. exactly the paper's `z_t = z_{t-1} + ∇u(z_{t-1})` per frame.
    `divergence="none"` moves z only (log q stays at logq0), for models that need no density.
    Batches: `jax.vmap` over z0, logq0 (and key). The training step's batched solve lives in the
    private `_batched` module and is tested equal to that vmap.
    """
    _check_divergence(divergence)
    probes = None
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("flow(divergence='hutchinson') needs key=... to draw its probes")
        probes = hutchinson_probes(key, num_probes, z0.shape[-1], z0.dtype)

    def vector_field(t, y, probes):
        grad, lap = velocity_and_laplacian(pot, t, y[0], divergence, probes)
        return grad, -lap

    return integrate(
        vector_field, z0, logq0, probes, ts,
        solver=solver, dt0=dt0, stepsize_controller=stepsize_controller, adjoint=adjoint, max_steps=max_steps,
    )


def _check_divergence(divergence: str) -> None:
    if divergence not in _DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; use one of {_DIVERGENCES}")


def integrate(
    vector_field,
    z0: Array,
    logq0: ScalarLike | Array,
    probes: Array | None,
    ts: Float[Array, " n"],
    *,
    solver: diffrax.AbstractSolver | None = None,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int | None = None,
) -> tuple[Array, Array]:
    """The one `diffeqsolve` of (z, log q) under `vector_field(t, (z, logq), probes)`, saved at ts.

    Defaults: Euler, dt0 = 1, constant steps, `RecursiveCheckpointAdjoint` sized for exactly the
    grid's steps (diffrax's default of 4096 would size the checkpointed backward for 4096).
    """
    solver = diffrax.Euler() if solver is None else solver
    dt0 = 1.0 if dt0 is None else dt0
    stepsize_controller = diffrax.ConstantStepSize() if stepsize_controller is None else stepsize_controller
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint
    if max_steps is None:
        fixed = isinstance(stepsize_controller, diffrax.ConstantStepSize)
        max_steps = (_fixed_grid_steps(ts, dt0) if fixed else None) or 4096
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
    return sol.ys


@dataclasses.dataclass(frozen=True)
class FlowSettings:
    """How a model integrates its flows: Euler steps of `dt0` (1 / steps per frame), the divergence of
    its density solves (with `num_probes` Hutchinson probes if used), and the divergence of its plain
    latent paths (`path_divergence`: "none" moves z only; the FFVAE keeps its density method, so a
    path is exactly the z of the density solve)."""

    dt0: float = 1.0
    divergence: Divergence = "exact"
    num_probes: int = 1
    path_divergence: Divergence = "exact"

    def __post_init__(self):
        _check_divergence(self.divergence)
        _check_divergence(self.path_divergence)
        if not self.dt0 > 0:
            raise ValueError(f"dt0 must be > 0, got {self.dt0}")

    def density(
        self,
        pot: AbstractPotential,
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        ts: Float[Array, " n"],
        key: PRNGKeyArray | None,
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """(z_t, log q_t(z_t)) at each time in ts (`flow` with these settings)."""
        return flow(pot, z0, logq0, ts, dt0=self.dt0, divergence=self.divergence, key=key, num_probes=self.num_probes)

    def path(
        self, pot: AbstractPotential, z0: Float[Array, " d"], ts: Float[Array, " n"], key: PRNGKeyArray | None
    ) -> Float[Array, "n d"]:
        """z_t at each time in ts, no density wanted."""
        divergence = self.path_divergence
        return flow(pot, z0, 0.0, ts, dt0=self.dt0, divergence=divergence, key=key, num_probes=self.num_probes)[0]
