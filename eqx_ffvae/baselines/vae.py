"""VAE and β-VAE (Higgins et al. 2017): the ELBO of single frames, with the KL weighted by β."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from ..interfaces import Terms, mean_sequence_loss
from ..layout import Layout
from ..nn import ConvDecoder, ConvEncoder
from .base import AbstractFrameVAE, BaselineConfig, conv_pair, frame_elbo


@dataclasses.dataclass(frozen=True)
class VAEConfig(BaselineConfig):
    """β = 1 is the VAE; the β-VAE of the comparison uses β = 4 (docs/method.md §6)."""

    beta: float = 1.0


class VAE(AbstractFrameVAE):
    """Every frame of a sequence is an independent example: −Σ_t [log p(x_t|z_t) − β KL_t]."""

    encoder: ConvEncoder
    decoder: ConvDecoder
    config: VAEConfig = eqx.field(static=True)

    def __init__(self, config: VAEConfig, *, key: PRNGKeyArray):
        self.encoder, self.decoder = conv_pair(config, config.latent_dim, key=key)
        self.config = config

    def loss(self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        del k
        recon, kl, _ = jax.vmap(lambda x, kk: frame_elbo(self.encoder, self.decoder, x, kk))(
            x_seq, jr.split(key, x_seq.shape[0])
        )
        recon, kl = jnp.sum(recon), jnp.sum(kl)
        loss = -recon + self.config.beta * kl
        return loss, {"loss": loss, "elbo": recon - kl, "recon": recon, "kl": kl}

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
