"""The path-space posterior of the FFVAE (docs/method.md §4, objective 3): a potential's drift plus the
prior's Brownian motion, and the exact KL between the two path measures.

Prior of flow k: dz = √(2D) dW from z_0 ~ N(0, I), whose marginals are the heat-equation solution
N(0, (1 + 2Dt) I) of docs/method.md §2. Posterior: dz = ∇u(t, z) dt + √(2D) dW from z_0 ~ q(z_0 | x_0).
Both share the diffusion, so by Girsanov KL[posterior path ‖ prior path | z_0] = E ∫ ‖∇u‖² / (4D) dt.

Discretised by Euler–Maruyama with step h the statement stays exact, not approximate: each posterior step
is N(z + h∇u(t, z), 2Dh I) and each prior step N(z, 2Dh I), whose KL is h‖∇u(t, z)‖² / (4D); the sum
over steps is the KL of the two discrete chains, and the discrete prior chain has the same marginals
N(0, (1 + 2Dt) I) at the grid times. So the ELBO trained with this estimator is a true bound on the
likelihood of the stated (discrete-time) model at any step size.
"""

from __future__ import annotations

import math

import diffrax
import diffrax._brownian.tree as _diffrax_tree
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, ScalarLike

from .potentials import AbstractPotential


class UncheckedBrownianTree(diffrax.AbstractBrownianPath):
    """diffrax's `VirtualBrownianTree`, the same samples (tested equal), without its run-time check that
    every time lies in [t0, t1]: that check is a host callback in every compiled step that holds it,
    which blocks the host at each step and keeps JAX's persistent cache from storing the step. The
    solves of this module evaluate only on their grid inside the range. (It calls the tree's private
    sampler: `tests/test_objectives_variants.py` checks it against the public `evaluate`.)"""

    tree: diffrax.VirtualBrownianTree

    @property
    def levy_area(self):
        return self.tree.levy_area

    @property
    def t0(self):
        return self.tree.t0

    @property
    def t1(self):
        return self.tree.t1

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        del left
        tree = self.tree

        def at(t):
            r = _diffrax_tree.linear_rescale(tree.t0, t, tree.t1)
            return jtu.tree_map(lambda key, shape: tree._evaluate_leaf(key, r, shape), tree.key, tree.shape)

        levy_0 = at(jax.lax.stop_gradient(t0))
        if t1 is None:
            levy = jtu.tree_map(_diffrax_tree._make_levy_val, tree.shape, levy_0)
        else:
            levy = jtu.tree_map(_diffrax_tree._levy_diff, tree.shape, levy_0, at(jax.lax.stop_gradient(t1)))
        levy = tree._denormalise_bm_inc(_diffrax_tree.levy_tree_transpose(tree.shape, levy))
        return levy if use_levy else levy.W


def brownian_path(key: PRNGKeyArray, t1: float, dt0: float, dim: int) -> UncheckedBrownianTree:
    """A reparameterised Brownian motion in R^dim (and one spare scalar channel for the KL state) on
    [0, dt0 · 2^m] ⊇ [0, t1], exact at every multiple of dt0: those are dyadic points of the tree, which
    it samples exactly (between them it interpolates, and no solve of this module evaluates there)."""
    span = dt0 * 2 ** max(0, math.ceil(math.log2(max(t1 / dt0, 1.0))))
    shape = (jax.ShapeDtypeStruct((dim,), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32))
    return UncheckedBrownianTree(diffrax.VirtualBrownianTree(0.0, span, tol=dt0 / 2, shape=shape, key=key))


def sde_path(
    pot: AbstractPotential,
    z0: Float[Array, " d"],
    ts: Float[ArrayLike, " n"],
    diffusion: ScalarLike,
    *,
    key: PRNGKeyArray,
    dt0: float = 1.0,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """One posterior path of ONE latent from ts[0] = 0 by Euler–Maruyama with step dt0, saved at ts
    (multiples of dt0), and the path KL accumulated up to each saved time: (zs, kls) with kls[0] = 0 and
    kls[i] = Σ_{steps before ts[i]} h ‖∇u(t, z)‖² / (4 D).

    `key` draws the Brownian path (reparameterised: gradients flow through the drift, not the noise).
    Batches: `jax.vmap` over z0 and key.
    """
    if isinstance(ts, jax.core.Tracer):
        raise ValueError("sde_path needs the save times known at trace time (a NumPy array, e.g. flows.frame_times)")
    ts = np.asarray(ts, np.float64)
    d = z0.shape[0]
    noise = jnp.sqrt(2.0 * jnp.asarray(diffusion, z0.dtype))
    kl_rate = 1.0 / (4.0 * jnp.asarray(diffusion, z0.dtype))

    def drift(t, y, args):
        grad = jax.grad(pot, argnums=1)(t, y[0])
        return grad, kl_rate * jnp.sum(grad**2)

    def scale(t, y, args):
        return lineax.DiagonalLinearOperator((jnp.full((d,), noise, z0.dtype), jnp.zeros((), z0.dtype)))

    rows = np.round(ts / dt0).astype(np.int64)
    if ts[0] != 0.0 or np.any(np.abs(rows * dt0 - ts) > 1e-6) or np.any(np.diff(rows) <= 0):
        raise ValueError(f"sde_path saves at increasing multiples of dt0 = {dt0} from 0, got ts = {ts.tolist()}")
    t1 = float(ts[-1])
    steps = int(rows[-1])
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(scale, brownian_path(key, t1, dt0, d)))
    sol = diffrax.diffeqsolve(
        terms,
        diffrax.Euler(),
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=(z0, jnp.zeros((), z0.dtype)),
        saveat=diffrax.SaveAt(t0=True, steps=True),
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=max(1, steps)),
        max_steps=max(1, steps),
        throw=False,  # no host callback in a jitted step (flows.integrate): a failed solve gives NaN instead
    )
    failed = jnp.logical_not(diffrax.is_okay(sol.result))
    return jax.tree.map(lambda y: jnp.where(failed, jnp.nan, y[rows]), (sol.ys[0], sol.ys[1]))
