"""FactorVAE (Kim & Mnih 2018): ELBO − γ·TC(z), the total correlation estimated by a discriminator
that tells q(z) from the product of its marginals (dimension-wise permuted latents)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from einops import rearrange
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from .. import distributions as obj
from ..interfaces import AbstractAdversarialModel, Terms
from ..layout import Layout
from ..nn import ConvDecoder, ConvEncoder
from .base import AbstractFrameVAE, BaselineConfig, conv_pair, frame_elbo


@dataclasses.dataclass(frozen=True)
class FactorVAEConfig(BaselineConfig):
    """γ = 10 (docs/method.md §6). The discriminator (an MLP, LeakyReLU 0.2, as in the paper but narrower) has
    its own Adam with the FactorVAE paper's β1 = 0.5, β2 = 0.9; it is updated after each VAE update
    on latents of the same batch (alternating updates)."""

    gamma: float = 10.0
    disc_width: int = 256
    disc_depth: int = 3
    disc_learning_rate: float = 1e-4
    disc_b1: float = 0.5
    disc_b2: float = 0.9


def permute_dims(z: Float[Array, "b d"], *, key: PRNGKeyArray) -> Float[Array, "b d"]:
    """Shuffle each latent dimension independently across the batch: samples of ∏_j q(z_j)."""
    keys = jr.split(key, z.shape[1])
    return jax.vmap(lambda col, k: jr.permutation(k, col), in_axes=(1, 0), out_axes=1)(z, keys)


class Discriminator(eqx.Module):
    """Two logits for one latent: [from q(z), from ∏_j q(z_j)]."""

    mlp: eqx.nn.MLP

    def __init__(self, latent_dim: int, width: int, depth: int, *, key: PRNGKeyArray):
        self.mlp = eqx.nn.MLP(latent_dim, 2, width, depth, activation=lambda x: jax.nn.leaky_relu(x, 0.2), key=key)

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, " 2"]:
        return self.mlp(z)


def total_correlation(disc: Discriminator, z: Float[Array, "b d"]) -> Scalar:
    """TC(z) ≈ E_q[log D(z) / (1 − D(z))], the density-ratio trick (mean over the batch)."""
    logits = jax.vmap(disc)(z)
    return jnp.mean(logits[:, 0] - logits[:, 1])


def discriminator_loss(disc: Discriminator, z: Float[Array, "b d"], *, key: PRNGKeyArray) -> Scalar:
    """Cross-entropy of telling z (class 0) from its dimension-wise permutation (class 1)."""
    real = jax.nn.log_softmax(jax.vmap(disc)(z))[:, 0]
    fake = jax.nn.log_softmax(jax.vmap(disc)(permute_dims(z, key=key)))[:, 1]
    return -0.5 * (jnp.mean(real) + jnp.mean(fake))


class FactorVAE(AbstractAdversarialModel, AbstractFrameVAE):
    encoder: ConvEncoder
    decoder: ConvDecoder
    discriminator: Discriminator
    config: FactorVAEConfig = eqx.field(static=True)

    def __init__(self, config: FactorVAEConfig, *, key: PRNGKeyArray):
        vae_key, disc_key = jr.split(key)
        self.encoder, self.decoder = conv_pair(config, config.latent_dim, key=vae_key)
        self.discriminator = Discriminator(config.latent_dim, config.disc_width, config.disc_depth, key=disc_key)
        self.config = config

    def loss(self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """The loss of one sequence alone (its frames form the TC batch); training uses `batch_loss`."""
        return self.batch_loss(x_seq[None], jnp.asarray(k)[None], key=key, step=0)

    def batch_loss(
        self,
        frames: Float[Array, "b n c h w"],
        ks: Int[Array, " b"],
        *,
        key: PRNGKeyArray,
        step: Int[ArrayLike, ""] | None,
        layout: Layout | None = None,
    ) -> tuple[Scalar, Terms]:
        """Per sequence −Σ_t ELBO_t + γ·(T+1)·TC, TC over every frame of the batch; the discriminator
        is held fixed here (its own update is `discriminator_loss`)."""
        del ks, step, layout
        flat = rearrange(frames, "b n c h w -> (b n) c h w")
        recon, kl, z = jax.vmap(lambda x, kk: frame_elbo(self.encoder, self.decoder, x, kk))(
            flat, jr.split(key, flat.shape[0])
        )
        per_seq = frames.shape[1]
        frozen = jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, self.discriminator)
        tc = total_correlation(frozen, z)
        recon, kl = per_seq * jnp.mean(recon), per_seq * jnp.mean(kl)
        loss = -recon + kl + self.config.gamma * per_seq * tc
        return loss, {"loss": loss, "elbo": recon - kl, "recon": recon, "kl": kl, "tc": tc}

    def discriminator_loss(self, frames: Float[Array, "b n c h w"], *, key: PRNGKeyArray) -> Scalar:
        """The discriminator's objective on this batch's latents (the encoder is held fixed)."""
        sample_key, perm_key = jr.split(key)
        mu, logvar = jax.vmap(self.encoder)(rearrange(frames, "b n c h w -> (b n) c h w"))
        z = obj.gaussian_sample(mu, logvar, sample_key)
        return discriminator_loss(self.discriminator, jax.lax.stop_gradient(z), key=perm_key)

    def discriminator_optimizer(self) -> optax.GradientTransformation:
        c = self.config
        return optax.adam(c.disc_learning_rate, b1=c.disc_b1, b2=c.disc_b2)
