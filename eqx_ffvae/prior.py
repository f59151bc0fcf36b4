"""The diffusion (heat-equation) prior of each flow (docs/method.md §2).

Flow k's prior density obeys ∂_t p = D_k ∇²p from p_0 = N(0, I), whose exact solution is
p^k_t = N(0, (1 + 2 D_k t) I): a closed form at any time and point, no solve needed.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, Scalar, ScalarLike


class DiffusionPrior(eqx.Module):
    """log p^k_t(z) with one learnable diffusion coefficient D_k = softplus(raw_k) > 0 per flow."""

    raw_diffusion: Float[Array, " k"]

    def __init__(self, num_flows: int, init: float = 1.0):
        if init <= 0:
            raise ValueError(f"the initial diffusion coefficient must be positive, got {init}")
        self.raw_diffusion = jnp.full((num_flows,), math.log(math.expm1(init)), dtype=jnp.float32)

    @property
    def diffusion(self) -> Float[Array, " k"]:
        return jax.nn.softplus(self.raw_diffusion)

    def variance(self, k: Int[ArrayLike, ""], t: ScalarLike) -> Scalar:
        return 1.0 + 2.0 * self.diffusion[k] * t

    def log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        var = self.variance(k, t).astype(z.dtype)
        d = z.shape[0]
        return -0.5 * (d * jnp.log(2 * jnp.pi * var) + jnp.sum(z**2) / var)
