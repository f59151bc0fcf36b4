"""Pure pieces of the objective (SPEC §3–§4): likelihoods, KLs and the Hamilton–Jacobi residual."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar, ScalarLike

from .potentials import AbstractPotential

ForceLike = Callable[[ScalarLike, Array], Scalar]


@jax.custom_jvp
def bernoulli_log_likelihood(logits: Float[Array, "..."], x: Float[Array, "..."]) -> Scalar:
    """Σ_pixels log Bernoulli(x | sigmoid(logits)), for targets x ∈ [0, 1].

    Its derivative rule shares one exp(−|logits|) between the softplus and ∂/∂logits = x − sigmoid:
    autodiff of `jax.nn.softplus` evaluates the exponential twice, and that elementwise pass costs as
    much as the GEMMs of the decoder's last layer.
    """
    return _bernoulli_and_gradient(logits, x)[0]


def _bernoulli_and_gradient(logits: Array, x: Array) -> tuple[Scalar, Array]:
    e = jnp.exp(-jnp.abs(logits))
    value = jnp.sum(x * logits - jnp.maximum(logits, 0) - jnp.log1p(e))
    return value, x - jnp.where(logits >= 0, 1, e) / (1 + e)


@bernoulli_log_likelihood.defjvp
def _bernoulli_jvp(primals: tuple[Array, Array], tangents: tuple[Array, Array]) -> tuple[Scalar, Scalar]:
    (logits, x), (d_logits, d_x) = primals, tangents
    value, grad = _bernoulli_and_gradient(logits, x)
    return value, jnp.sum(grad * d_logits) + jnp.sum(logits * d_x)


def gaussian_log_prob(z: Float[Array, " d"], mu: Float[Array, " d"], logvar: Float[Array, " d"]) -> Scalar:
    """log N(z; mu, diag exp(logvar))."""
    return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + logvar + (z - mu) ** 2 * jnp.exp(-logvar))


def gaussian_sample(mu: Float[Array, "*d"], logvar: Float[Array, "*d"], key: PRNGKeyArray) -> Float[Array, "*d"]:
    """z = mu + σ ε, ε ~ N(0, I): the reparameterised draw every model uses."""
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


def kl_to_standard_normal(mu: Float[Array, " d"], logvar: Float[Array, " d"]) -> Scalar:
    """KL[N(mu, diag exp(logvar)) ‖ N(0, I)], analytic."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar)


def kl_to_uniform(logits: Float[Array, " k"]) -> Scalar:
    """KL[Categorical(softmax(logits)) ‖ Uniform(K)]."""
    logq = jax.nn.log_softmax(logits)
    return jnp.sum(jnp.exp(logq) * (logq + jnp.log(logits.shape[0])))


def hj_residual(pot: AbstractPotential, force: ForceLike, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
    """∂_t u + ½‖∇_z u‖² − f at one (t, z): zero where u solves the Hamilton–Jacobi equation."""
    du_dt, grad = jax.grad(pot, argnums=(0, 1))(jnp.asarray(t, z.dtype), z)
    return du_dt + 0.5 * jnp.sum(grad**2) - force(t, z)


def hj_loss(
    pot: AbstractPotential, force: ForceLike, ts: Float[Array, " n"], zs: Float[Array, "n d"]
) -> Scalar:
    """Mean squared HJ residual over collocation pairs (t_i, z_i) of one sample."""
    res = jax.vmap(hj_residual, in_axes=(None, None, 0, 0))(pot, force, ts, zs)
    return jnp.mean(res**2)


def hj_initial_loss(pot: AbstractPotential, force: ForceLike, z: Float[Array, " d"]) -> Scalar:
    """Initial-condition term ‖∇u(z, 0)‖² + f(z, 0)² (the reference code weights it by 1)."""
    grad = jax.grad(lambda x: pot(0.0, x))(z)
    return jnp.sum(grad**2) + force(0.0, z) ** 2


def usage_kl(usage: Float[Array, " k"]) -> Scalar:
    """KL[ū ‖ Uniform(K)] of a batch's mean assignment ū: ≥ 0, 0 exactly at balanced use, log K at collapse."""
    return jnp.sum(jax.scipy.special.xlogy(usage, usage)) + jnp.log(usage.shape[0])


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
