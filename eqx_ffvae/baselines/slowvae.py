"""SlowVAE (Klindt et al. 2021): consecutive latents are tied by a sparse (Laplace) transition prior."""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from .. import distributions as obj
from ..interfaces import Terms, mean_sequence_loss
from ..layout import Layout
from ..nn import ConvDecoder, ConvEncoder
from .base import AbstractFrameVAE, BaselineConfig, conv_pair


@dataclasses.dataclass(frozen=True)
class SlowVAEConfig(BaselineConfig):
    """Laplace rate α = 6, transition weight γ = 10, N(0, I) KL weight β = 1 (docs/method.md §6). Over a
    sequence, every frame gets the β term and frames 1…T the γ term, with the Laplace centred at the
    (reparameterised) sample of the previous frame."""

    rate: float = 6.0
    gamma: float = 10.0
    beta: float = 1.0


def kl_gaussian_laplace(
    mu: Float[Array, " d"], logvar: Float[Array, " d"], loc: Float[Array, " d"], rate: float
) -> Scalar:
    """KL[N(mu, diag σ²) ‖ ∏_j Laplace(loc_j, scale 1/rate)], closed form:

    Σ_j −½ log(2π e σ_j²) + log(2/rate) + rate · E|z_j − loc_j|, with the folded-normal mean
    E|z − m| = σ √(2/π) exp(−δ²/2σ²) + δ erf(δ/(σ√2)), δ = mu − m.
    """
    sigma = jnp.exp(0.5 * logvar)
    delta = mu - loc
    abs_mean = sigma * math.sqrt(2 / math.pi) * jnp.exp(-0.5 * (delta / sigma) ** 2) + delta * jax.scipy.special.erf(
        delta / (sigma * math.sqrt(2))
    )
    neg_entropy = -0.5 * (math.log(2 * math.pi) + 1.0 + logvar)
    return jnp.sum(neg_entropy + math.log(2 / rate) + rate * abs_mean)


class SlowVAE(AbstractFrameVAE):
    encoder: ConvEncoder
    decoder: ConvDecoder
    config: SlowVAEConfig = eqx.field(static=True)

    def __init__(self, config: SlowVAEConfig, *, key: PRNGKeyArray):
        self.encoder, self.decoder = conv_pair(config, config.latent_dim, key=key)
        self.config = config

    def loss(self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """−Σ_t log p(x_t|z_t) + β Σ_t KL[q_t ‖ N(0, I)] + γ Σ_{t≥1} KL[q_t ‖ Laplace(z_{t−1}, 1/α)]."""
        del k
        c = self.config
        mu, logvar = jax.vmap(self.encode)(x_seq)
        z = obj.gaussian_sample(mu, logvar, key)
        recon = jnp.sum(self.decoder.log_likelihoods(z, x_seq))
        kl = jnp.sum(jax.vmap(obj.kl_to_standard_normal)(mu, logvar))
        slow = jnp.sum(
            jax.vmap(lambda m, lv, prev: kl_gaussian_laplace(m, lv, prev, c.rate))(mu[1:], logvar[1:], z[:-1])
        )
        loss = -recon + c.beta * kl + c.gamma * slow
        return loss, {"loss": loss, "elbo": recon - kl, "recon": recon, "kl": kl, "kl_slow": slow}

    def batch_loss(
        self,
        frames: Float[Array, "b n c h w"],
        ks: Int[Array, " b"],
        *,
        key: PRNGKeyArray,
        step: Int[ArrayLike, ""] | None,
        layout: Layout | None = None,
    ) -> tuple[Scalar, Terms]:
        del step, layout
        return mean_sequence_loss(self, frames, ks, key=key)
