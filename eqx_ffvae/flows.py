"""Latent flows: dz/dt = ∇u(t, z), d log q/dt = -Δu(t, z), one Diffrax solve per example (docs/method.md §3)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

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


def _fixed_grid_steps(ts: ArrayLike, dt0: float) -> int | None:
    try:
        span = float(np.asarray(ts[-1]) - np.asarray(ts[0]))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None
    return max(1, math.ceil(span / dt0 - 1e-6))


def _grid_rows(ts: ArrayLike, dt0: float) -> tuple[float, float, np.ndarray] | None:
    """(t0, t1, the step index of each of ts) when ts are known at trace time and every one lies on
    the grid t0 + i·dt0; None otherwise."""
    try:
        times = np.asarray(ts, np.float64)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None
    rows = np.round((times - times[0]) / dt0).astype(np.int64)
    if times.ndim != 1 or np.any(np.diff(rows) < 0) or np.max(np.abs(times[0] + rows * dt0 - times)) > 1e-6:
        return None
    return float(times[0]), float(times[-1]), rows


def frame_times(num_frames: int) -> Float[ArrayLike, " n"]:
    """The integer times 0, 1, …, T at which the frames of a sequence sit (one unit of flow time each).

    A NumPy array, known at trace time even inside `jit`: the solves then size their step count and
    save times from it and compile no run-time checks of it (`integrate`)."""
    return np.arange(num_frames, dtype=np.float32)


def flow(
    pot: AbstractPotential,
    z0: Float[Array, " d"],
    logq0: ScalarLike,
    ts: Float[ArrayLike, " n"],
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
    `layout` module and is tested equal to that vmap.
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
        vector_field,
        z0,
        logq0,
        probes,
        ts,
        solver=solver,
        dt0=dt0,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
    )


def _check_divergence(divergence: str) -> None:
    if divergence not in _DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; use one of {_DIVERGENCES}")


def integrate(
    vector_field,
    z0: Array,
    logq0: ScalarLike | Array,
    probes: Array | None,
    ts: Float[ArrayLike, " n"],
    *,
    solver: diffrax.AbstractSolver | None = None,
    dt0: float | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int | None = None,
    throw: bool = False,
) -> tuple[Array, Array]:
    """The one `diffeqsolve` of (z, log q) under `vector_field(t, (z, logq), probes)`, saved at ts.

    Defaults: Euler, dt0 = 1, constant steps, `RecursiveCheckpointAdjoint` sized for exactly the
    grid's steps and keeping every one of them (the backward recomputes nothing).

    A solve that fails (`max_steps` reached, an adaptive controller that gives up) returns NaN states:
    a loss built on them is non-finite, which the training loop stops on. No runtime check is
    compiled in, so a jitted step holds no host callback: it runs asynchronously and JAX's persistent
    compilation cache can store it. That needs constant steps and ts known at trace time on the grid
    t0 + i·dt0 (every solve of this package); otherwise diffrax checks ts at run time. `throw=True`
    raises diffrax's error at run time instead (through a host callback).
    """
    solver = diffrax.Euler() if solver is None else solver
    dt0 = 1.0 if dt0 is None else dt0
    stepsize_controller = diffrax.ConstantStepSize() if stepsize_controller is None else stepsize_controller
    fixed = isinstance(stepsize_controller, diffrax.ConstantStepSize)
    grid = _grid_rows(ts, dt0) if fixed else None
    grid_steps = max(1, int(grid[2][-1])) if grid else None
    if max_steps is None:
        max_steps = grid_steps or (_fixed_grid_steps(ts, dt0) if fixed else None) or 4096
    if adjoint is None:
        # On a grid every step's state is kept for the backward pass: few, small states. Diffrax's
        # default keeps ~sqrt(2·max_steps) of them and recomputes the rest (slower: docs/performance.md).
        adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=grid_steps)
    if grid is not None:
        # Every step saved and the frames picked out: the same states as SaveAt(ts) on this grid, with
        # t0, t1 and the save times known at trace time, so diffrax compiles no checks of them.
        t0, t1, rows = grid
        saveat = diffrax.SaveAt(t0=True, steps=True)
    else:
        t0, t1, rows = ts[0], ts[-1], None
        saveat = diffrax.SaveAt(ts=ts)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=(z0, jnp.asarray(logq0, z0.dtype)),
        args=probes,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw,
    )
    failed = jnp.logical_not(diffrax.is_okay(sol.result))
    ys = sol.ys if rows is None else jax.tree.map(lambda y: y[rows], sol.ys)
    return jax.tree.map(lambda y: jnp.where(failed, jnp.nan, y), ys)


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

    @property
    def steps_per_frame(self) -> int:
        """Euler steps per unit of time (frames sit at integer times); dt0 must divide 1."""
        steps = round(1.0 / self.dt0)
        if abs(steps * self.dt0 - 1.0) > 1e-6:
            raise ValueError(f"dt0 = {self.dt0} does not divide one frame interval; use 1/steps_per_frame")
        return steps

    def density(
        self,
        pot: AbstractPotential,
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        ts: Float[ArrayLike, " n"],
        key: PRNGKeyArray | None,
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """(z_t, log q_t(z_t)) at each time in ts (`flow` with these settings)."""
        return flow(pot, z0, logq0, ts, dt0=self.dt0, divergence=self.divergence, key=key, num_probes=self.num_probes)

    def path(
        self, pot: AbstractPotential, z0: Float[Array, " d"], ts: Float[ArrayLike, " n"], key: PRNGKeyArray | None
    ) -> Float[Array, "n d"]:
        """z_t at each time in ts, no density wanted."""
        divergence = self.path_divergence
        return flow(pot, z0, 0.0, ts, dt0=self.dt0, divergence=divergence, key=key, num_probes=self.num_probes)[0]


def _lu_log_abs_det(lu: Array) -> Scalar:
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(lu))))


def map_step(
    pot: AbstractPotential, t: ScalarLike, z: Float[Array, " d"], h: ScalarLike, *, eigenvalues: bool = True
) -> tuple[Float[Array, " d"], Scalar, Scalar | None, Scalar]:
    """One step of the Euler map z ↦ z + h ∇u(t, z) with its exact log-Jacobian (docs/method.md §3).

    Returns (the image, log|det(I + h∇²u)|, the smallest eigenvalue of I + h∇²u (None unless
    `eigenvalues`), and the trace form h Δu that an Euler step of the ODE's density uses instead).
    The map is invertible where the smallest eigenvalue is > 0; the trace form exceeds the log-det by
    Σ_i λ_i − log(1 + λ_i) ≥ 0 over the eigenvalues λ_i of h∇²u.
    """
    grad, hess = pot.grad_and_hessian(t, z)
    jac = jnp.eye(z.shape[0], dtype=z.dtype) + h * hess
    if eigenvalues:
        eig = jnp.linalg.eigvalsh(jac)
        logdet, min_eig = jnp.sum(jnp.log(jnp.abs(eig))), eig[0]
    else:
        logdet, min_eig = _lu_log_abs_det(jax.scipy.linalg.lu_factor(jac)[0]), None
    return z + h * grad, logdet, min_eig, h * jnp.trace(hess)


class MapDensity(NamedTuple):
    """The Euler map's path and exact density at the frames, with what it says about the map.

    `zs`, `logqs`: z_t and log q_t(z_t) at frames 0…T; `min_eigenvalue`: the smallest eigenvalue of
    I + h∇²u met on the path (the map is invertible there iff > 0; None if not asked for);
    `logdet_gap`: at each frame, the accumulated Σ(h Δu − log|det(I + h∇²u)|), i.e. how much lower
    the trace form's log q_t is.
    """

    zs: Float[Array, "n d"]
    logqs: Float[Array, " n"]
    min_eigenvalue: Scalar | None
    logdet_gap: Float[Array, " n"]


def map_density(
    pot: AbstractPotential,
    z0: Float[Array, " d"],
    logq0: ScalarLike,
    num_frames: int,
    steps_per_frame: int = 1,
    *,
    eigenvalues: bool = True,
) -> MapDensity:
    """Carry ONE latent along the Euler map with step h = 1/steps_per_frame (the positions of `flow`'s
    default Euler solve) with the exact change of variables log q ← log q − log|det(I + h∇²u)|.
    `eigenvalues=False` skips the eigen-decomposition (the log-det from an LU factorisation)."""
    h = 1.0 / steps_per_frame
    num_steps = (num_frames - 1) * steps_per_frame

    def step(carry, s):
        z, logq, gap = carry
        z_next, logdet, min_eig, trace = map_step(pot, s * h, z, h, eigenvalues=eigenvalues)
        carry = (z_next, logq - logdet, gap + trace - logdet)
        return carry, (carry, min_eig)

    init = (z0, jnp.asarray(logq0, z0.dtype), jnp.zeros((), z0.dtype))
    _, ((zs, logqs, gaps), min_eigs) = jax.lax.scan(step, init, jnp.arange(num_steps, dtype=z0.dtype))
    frames = slice(steps_per_frame - 1, None, steps_per_frame)
    return MapDensity(
        jnp.concatenate([z0[None], zs[frames]]),
        jnp.concatenate([init[1][None], logqs[frames]]),
        None if min_eigs is None else jnp.min(min_eigs),
        jnp.concatenate([init[2][None], gaps[frames]]),
    )


def invert_map_step(
    pot: AbstractPotential,
    t: ScalarLike,
    y: Float[Array, " d"],
    h: ScalarLike,
    *,
    iterations: int = 8,
    inverse_jacobian: Float[Array, "d d"] | None = None,
) -> tuple[Float[Array, " d"], Scalar]:
    """The z with z + h∇u(t, z) = y (the Euler map's inverse), and the residual ‖z + h∇u(t, z) − y‖.

    Chord Newton from the first guess y − h∇u(t, y) with one inverse Jacobian reused for every
    iteration — by default (I + h∇²u)⁻¹ at that guess, or `inverse_jacobian` (any nearby one: it sets
    the rate, not the root). A gradient map with I + h∇²u positive definite is the gradient of a
    strictly convex function, so the root is unique. The residual is returned so callers can state the
    tolerance met.
    """
    grad = jax.grad(lambda x: pot(t, x))
    z = y - h * grad(y)
    if inverse_jacobian is None:
        inverse_jacobian = jnp.linalg.inv(jnp.eye(y.shape[0], dtype=y.dtype) + h * pot.grad_and_hessian(t, z)[1])

    def newton(z, _):
        return z - inverse_jacobian @ (z + h * grad(z) - y), None

    z, _ = jax.lax.scan(newton, z, None, length=iterations)
    return z, jnp.linalg.norm(z + h * grad(z) - y)


def map_log_density(
    pot: AbstractPotential,
    y: Float[Array, " d"],
    frame: Int[ArrayLike, ""],
    log_q0: Callable[[Float[Array, " d"]], Scalar],
    num_frames: int,
    steps_per_frame: int = 1,
    *,
    iterations: int = 8,
) -> tuple[Scalar, Scalar]:
    """log q_t(y) of the Euler map's push-forward of q_0 at frame t: invert the map back to z_0 and
    log q_t(y) = log q_0(z_0) − Σ log|det(I + h∇²u)| along the path; and the largest inversion residual.

    Each step back forms one Hessian and one LU factorisation, at the preimage: its log-det, and the
    inverse that is the chord Jacobian of the next step back. A fixed number of steps (the whole
    horizon) runs under `lax.scan`; steps after frame t's are identity, so frames vmap together.
    """
    h = 1.0 / steps_per_frame
    num_steps = (num_frames - 1) * steps_per_frame
    used = jnp.asarray(frame) * steps_per_frame
    eye = jnp.eye(y.shape[0], dtype=y.dtype)

    def back(carry, s):
        z, acc, worst, inv = carry
        t = s * h
        z_prev, residual = invert_map_step(pot, t, z, h, iterations=iterations, inverse_jacobian=inv)
        lu_piv = jax.scipy.linalg.lu_factor(eye + h * pot.grad_and_hessian(t, z_prev)[1])
        active = s < used
        return (
            jnp.where(active, z_prev, z),
            acc + jnp.where(active, _lu_log_abs_det(lu_piv[0]), 0.0),
            jnp.maximum(worst, jnp.where(active, residual, 0.0)),
            jnp.where(active, jax.scipy.linalg.lu_solve(lu_piv, eye), inv),
        ), None

    steps = jnp.arange(num_steps - 1, -1, -1)
    inv0 = jnp.linalg.inv(eye + h * pot.grad_and_hessian((num_steps - 1) * h, y)[1])
    zero = jnp.zeros((), y.dtype)
    (z0, acc, worst, _), _ = jax.lax.scan(back, (y, zero, zero, inv0), steps)
    return log_q0(z0) - acc, worst
