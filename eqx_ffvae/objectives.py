"""Pure pieces of the objective (docs/method.md §3–§4): the Hamilton–Jacobi residual and the balanced E-step.

The likelihoods and KLs live in `distributions` (the ground floor) and are re-exported here, so
`objectives.<name>` names every piece of the ELBO.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Scalar, ScalarLike

from .distributions import bernoulli_log_likelihood as bernoulli_log_likelihood
from .distributions import gaussian_log_prob as gaussian_log_prob
from .distributions import gaussian_sample as gaussian_sample
from .distributions import kl_to_standard_normal as kl_to_standard_normal
from .distributions import kl_to_uniform as kl_to_uniform
from .distributions import usage_kl as usage_kl
from .potentials import AbstractPotential

ForceLike = Callable[[ScalarLike, Array], Scalar]


def hj_residual(pot: AbstractPotential, force: ForceLike, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
    """∂_t u + ½‖∇_z u‖² − f at one (t, z): zero where u solves the Hamilton–Jacobi equation."""
    du_dt, grad = jax.grad(pot, argnums=(0, 1))(jnp.asarray(t, z.dtype), z)
    return du_dt + 0.5 * jnp.sum(grad**2) - force(t, z)


def hj_loss(pot: AbstractPotential, force: ForceLike, ts: Float[ArrayLike, " n"], zs: Float[Array, "n d"]) -> Scalar:
    """Mean squared HJ residual over collocation pairs (t_i, z_i) of one sample."""
    res = jax.vmap(hj_residual, in_axes=(None, None, 0, 0))(pot, force, ts, zs)
    return jnp.mean(res**2)


def hj_initial_loss(pot: AbstractPotential, force: ForceLike, z: Float[Array, " d"]) -> Scalar:
    """Initial-condition term ‖∇u(z, 0)‖² + f(z, 0)² (the reference code weights it by 1)."""
    grad = jax.grad(lambda x: pot(0.0, x))(z)
    return jnp.sum(grad**2) + force(0.0, z) ** 2


def balanced_assignment(
    scores: Float[Array, "b k"], min_share: ScalarLike = 1.0, *, num_levels: int = 24, iters_per_level: int = 60
) -> Float[Array, "b k"]:
    """log P of the soft assignment of b items to k groups, every group given at least its share.

    P maximises Σ_ik P_ik scores_ik + H(P) subject to Σ_k P_ik = 1 (each row a distribution) and
    Σ_i P_ik ≥ min_share · b/k for every group (min_share = 1: exactly balanced, Sinkhorn; 0: the
    plain posterior softmax(scores)). The solution is P_ik ∝ exp(scores_ik + β_k) with β_k ≥ 0 the
    multiplier of group k's constraint, non-zero only where the posterior would give k less than its
    minimum: P is the posterior of k under the smallest per-group log-prior boost that meets it.
    Scores are in nats, so temperature 1 is the posterior's own.

    Scores that differ by hundreds of nats make plain Sinkhorn crawl (each column update moves β by
    about one temperature), so β is found by ε-scaling: dual updates at temperatures halving from the
    scores' range down to 1, each level warm-started from the last. Rows are exact distributions;
    columns meet their minimum to within a small fraction of an item.
    """
    b, k = scores.shape
    log_min = jnp.log(jnp.asarray(min_share, scores.dtype) * b / k)
    spread = jnp.max(jnp.max(scores, axis=1) - jnp.min(scores, axis=1))
    levels = jnp.maximum(1.0, spread * 0.5 ** jnp.arange(num_levels, dtype=scores.dtype))
    levels = jnp.concatenate([levels, jnp.ones((4,), scores.dtype)])

    def column_update(beta, eps):
        log_p = jax.nn.log_softmax((scores + beta[None]) / eps, axis=1)
        return jnp.maximum(0.0, beta + eps * (log_min - jax.nn.logsumexp(log_p, axis=0)))

    def level(beta, eps):
        beta = jax.lax.fori_loop(0, iters_per_level, lambda _, bt: column_update(bt, eps), beta)
        return beta, None

    beta, _ = jax.lax.scan(level, jnp.zeros((k,), scores.dtype), levels)
    return jax.nn.log_softmax(scores + beta[None], axis=1)
