"""The ground floor: log-densities, draws and KLs of the distributions every model uses.

Imports nothing from the package. Bernoulli likelihoods for pixels, diagonal Gaussians for latents,
categorical KLs for the inferred transformation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar


@jax.custom_jvp
def bernoulli_log_likelihood(logits: Float[Array, ...], x: Float[Array, ...]) -> Scalar:
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


def _minus_twice_log_density(z: Array, mu: Array, logvar: Array) -> Array:
    return jnp.log(2 * jnp.pi) + logvar + ((z - mu) * jnp.exp(-0.5 * logvar)) ** 2


def gaussian_log_prob(z: Float[Array, " d"], mu: Float[Array, " d"], logvar: Float[Array, " d"]) -> Scalar:
    """log N(z; mu, diag exp(logvar)). The standardised distance is formed before squaring, so a wide
    component (an encoder's logvar ~ 100 on an image unlike its training data) gives a finite density
    instead of inf · 0 = NaN."""
    return -0.5 * jnp.sum(_minus_twice_log_density(z, mu, logvar))


def gaussian_log_density(
    x: Float[Array, "*s"], mu: Float[Array, "*s"], logvar: Float[Array, "*s"]
) -> Float[Array, "*s"]:
    """log N(x; mu, exp(logvar)) of independent scalars, elementwise (the terms `gaussian_log_prob` sums)."""
    return -0.5 * _minus_twice_log_density(x, mu, logvar)


def standard_normal_log_prob(z: Float[Array, " d"]) -> Scalar:
    """log N(z; 0, I)."""
    return gaussian_log_prob(z, jnp.zeros_like(z), jnp.zeros_like(z))


def gaussian_sample(mu: Float[Array, "*d"], logvar: Float[Array, "*d"], key: PRNGKeyArray) -> Float[Array, "*d"]:
    """z = mu + σ ε, ε ~ N(0, I): the reparameterised draw every model uses."""
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


def gaussian_draw(
    mu: Float[Array, " d"], logvar: Float[Array, " d"], key: PRNGKeyArray
) -> tuple[Float[Array, " d"], Scalar]:
    """A reparameterised draw of N(mu, diag exp(logvar)) and its log-density (from the standard normal
    draw itself, so it is finite however wide the component)."""
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    z = mu + jnp.exp(0.5 * logvar) * eps
    return z, -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + logvar + eps**2)


def kl_to_standard_normal(mu: Float[Array, " d"], logvar: Float[Array, " d"]) -> Scalar:
    """KL[N(mu, diag exp(logvar)) ‖ N(0, I)], analytic."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar)


def kl_gaussians(mu: Float[Array, "*s"], logvar: Float[Array, "*s"], mean: float, std: float) -> Float[Array, "*s"]:
    """KL[N(mu, exp(logvar)) ‖ N(mean, std²)] of independent scalars, elementwise."""
    return 0.5 * ((jnp.exp(logvar) + (mu - mean) ** 2) / std**2 - 1.0 - logvar) + jnp.log(std)


def kl_to_uniform(logits: Float[Array, " k"]) -> Scalar:
    """KL[Categorical(softmax(logits)) ‖ Uniform(K)]."""
    logq = jax.nn.log_softmax(logits)
    return jnp.sum(jnp.exp(logq) * (logq + jnp.log(logits.shape[0])))


def usage_kl(usage: Float[Array, " k"]) -> Scalar:
    """KL[ū ‖ Uniform(K)] of a batch's mean assignment ū: ≥ 0, 0 exactly at balanced use, log K at collapse."""
    return jnp.sum(jax.scipy.special.xlogy(usage, usage)) + jnp.log(usage.shape[0])
