"""Topographic VAE (Keller & Welling 2021): a Student-t latent s = (z + μ) / sqrt(W u²) whose
denominator pools u² over neighbours within a capsule and over neighbouring frames, each rolled
back by its frame offset, so the transformation it learns is a cyclic roll within capsules."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from einops import rearrange
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

from .. import distributions as obj
from ..flows import frame_times
from ..interfaces import AbstractTransportModel, Terms, mean_sequence_loss
from ..layout import Layout
from ..nn import ConvDecoder, ConvEncoder
from .base import BaselineConfig, conv_pair


@dataclasses.dataclass(frozen=True)
class TVAEConfig(BaselineConfig):
    """`capsule_size` (default: the smallest divisor of latent_dim that is ≥ num_frames, so a
    sequence's roll never wraps round a capsule); W sums u² over `spatial_window` cyclic neighbours
    within a capsule and over frames t−`time_window`…t+`time_window`. One roll serves every k."""

    capsule_size: int | None = None
    spatial_window: int = 3
    time_window: int = 1
    eps: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if self.capsule_size is None and self.latent_dim < self.num_frames:
            raise ValueError(
                f"the default capsule holds at least num_frames={self.num_frames} units (a capsule rolls once per "
                f"frame), more than latent_dim={self.latent_dim}: raise latent_dim or give capsule_size"
            )
        size = self.capsules
        if self.latent_dim % size:
            raise ValueError(f"capsule_size {size} does not divide latent_dim {self.latent_dim}; choose a divisor")
        if self.spatial_window % 2 == 0 or self.spatial_window > size:
            raise ValueError(f"spatial_window must be odd and ≤ capsule_size {size}, got {self.spatial_window}")

    @property
    def capsules(self) -> int:
        """The capsule size in use."""
        if self.capsule_size is not None:
            return self.capsule_size
        return next(c for c in range(self.num_frames, self.latent_dim + 1) if self.latent_dim % c == 0)


def capsule_roll(v: Float[Array, " d"], shift: Int[ArrayLike, ""], capsule_size: int) -> Float[Array, " d"]:
    """Roll every capsule (consecutive block of `capsule_size` units) cyclically by `shift`."""
    capsules = rearrange(v, "(m s) -> m s", s=capsule_size)
    return rearrange(jnp.roll(capsules, shift, axis=1), "m s -> (m s)")


class TVAE(AbstractTransportModel):
    encoder: ConvEncoder
    decoder: ConvDecoder
    u_encoder: ConvEncoder
    shift: Float[Array, " d"]
    config: TVAEConfig = eqx.field(static=True)

    def __init__(self, config: TVAEConfig, *, key: PRNGKeyArray):
        pair_key, u_key = jr.split(key)
        c = config
        self.encoder, self.decoder = conv_pair(c, c.latent_dim, key=pair_key)
        self.u_encoder = ConvEncoder(c.image_shape, c.latent_dim, c.width, impl=c.conv_impl, key=u_key)
        self.shift = jnp.zeros(c.latent_dim, jnp.float32)
        self.config = config

    def _pool(self, u2: Float[Array, " d"]) -> Float[Array, " d"]:
        """W u²: the sum over each unit's `spatial_window` cyclic neighbours in its capsule."""
        half = self.config.spatial_window // 2
        offsets = jnp.arange(-half, half + 1)
        return jnp.sum(jax.vmap(lambda o: capsule_roll(u2, o, self.config.capsules))(offsets), axis=0)

    def window_pool(self, u2_seq: Float[Array, "n d"], t: Int[ArrayLike, ""]) -> Float[Array, " d"]:
        """Training's denominator at frame t: W Σ_δ roll(u²_{t+δ}, −δ) over |δ| ≤ time_window inside
        the sequence."""
        c, n = self.config, u2_seq.shape[0]

        def term(delta):
            src = t + delta
            valid = (src >= 0) & (src < n)
            return jnp.where(valid, capsule_roll(u2_seq[jnp.clip(src, 0, n - 1)], -delta, c.capsules), 0.0)

        return self._pool(jnp.sum(jax.vmap(term)(jnp.arange(-c.time_window, c.time_window + 1)), axis=0))

    def frame_pool(self, u2: Float[Array, " d"]) -> Float[Array, " d"]:
        """The same window seen from one frame (evaluation: encoding x_0, scoring frame t alone): its
        neighbours are the model's own roll of it, u_{t+δ} = roll(u_t, δ), so each of the 2·time_window + 1
        terms of `window_pool` is u_t² (an interior frame's window, the one most frames train with)."""
        return self._pool((2 * self.config.time_window + 1) * u2)

    def _student(self, z: Array, pooled: Array) -> Array:
        return (z + self.shift) / jnp.sqrt(pooled + self.config.eps)

    def encode(self, x: Float[Array, "c h w"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        """(s at the posterior means with E[u²] = μ_u² + σ_u², log-variance of z)."""
        mu_z, logvar_z = self.encoder(x)
        mu_u, logvar_u = self.u_encoder(x)
        return self._student(mu_z, self.frame_pool(mu_u**2 + jnp.exp(logvar_u))), logvar_z

    def transport(
        self,
        k: Int[ArrayLike, ""],
        s0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """Frame t of any transformation is s0 rolled by t within every capsule."""
        del k, key
        ts = frame_times(self.config.num_frames) if ts is None else ts
        return jax.vmap(lambda t: capsule_roll(s0, jnp.round(t).astype(jnp.int32), self.config.capsules))(ts)

    def importance_proposal(
        self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n e"], Float[Array, " n"]]:
        """One (z_t, u_t) ~ q(z|x_t) q(u|x_t) per frame, concatenated, with its log-density."""
        del k
        return jax.vmap(lambda x, kk: self.frame_proposal(x, key=kk))(x_seq, jr.split(key, x_seq.shape[0]))

    def frame_proposal(self, x: Float[Array, "c h w"], *, key: PRNGKeyArray) -> tuple[Float[Array, " e"], Scalar]:
        """(z, u) ~ q(z|x) q(u|x), concatenated, with its log-density."""
        z_key, u_key = jr.split(key)
        (mu_z, lv_z), (mu_u, lv_u) = self.encoder(x), self.u_encoder(x)
        zu = jnp.concatenate([obj.gaussian_sample(mu_z, lv_z, z_key), obj.gaussian_sample(mu_u, lv_u, u_key)])
        return zu, self.frame_proposal_log_prob(x, zu)

    def frame_proposal_log_prob(self, x: Float[Array, "c h w"], zu: Float[Array, " e"]) -> Scalar:
        z, u = jnp.split(zu, 2)
        (mu_z, lv_z), (mu_u, lv_u) = self.encoder(x), self.u_encoder(x)
        return obj.gaussian_log_prob(z, mu_z, lv_z) + obj.gaussian_log_prob(u, mu_u, lv_u)

    def proposal_log_likelihood(self, zu: Float[Array, " e"], x: Float[Array, "c h w"]) -> Scalar:
        """log p(x | s(z, u)) of a single frame, u² pooled over training's window (`frame_pool`)."""
        z, u = jnp.split(zu, 2)
        return self.decoder.output_log_likelihood(self.decode(self._student(z, self.frame_pool(u**2))), x)

    def decode(self, z: Float[Array, " d"]) -> Float[Array, "c h w"]:
        return self.decoder(z)

    def prior_log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " e"]) -> Scalar:
        """N(0, I) on the proposal's (z, u)."""
        del k, t
        return obj.standard_normal_log_prob(z)

    @property
    def num_flows(self) -> int:
        return self.config.num_flows

    def compose(
        self,
        weights: Float[Array, " k"],
        s0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """Every k shares one roll generator, so Σ_k w_k of them rolls by round(t · Σ_k w_k) at time t."""
        del key
        ts = frame_times(self.config.num_frames) if ts is None else ts
        shifts = jnp.round(ts * jnp.sum(weights)).astype(jnp.int32)
        return jax.vmap(lambda shift: capsule_roll(s0, shift, self.config.capsules))(shifts)

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

    def loss(self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """−Σ_t log p(x_t | s_t) + Σ_t KL[q(z_t)‖N] + KL[q(u_t)‖N]; s_t pools u² of frames t+δ
        (|δ| ≤ time_window, inside the sequence) rolled by −δ."""
        del k
        n = x_seq.shape[0]
        z_key, u_key = jr.split(key)
        mu_z, lv_z = jax.vmap(self.encoder)(x_seq)
        mu_u, lv_u = jax.vmap(self.u_encoder)(x_seq)
        z, u = obj.gaussian_sample(mu_z, lv_z, z_key), obj.gaussian_sample(mu_u, lv_u, u_key)
        u2 = u**2
        s = jax.vmap(lambda t, z_t: self._student(z_t, self.window_pool(u2, t)))(jnp.arange(n), z)
        recon = jnp.sum(self.decoder.log_likelihoods(s, x_seq))
        kl = jnp.sum(jax.vmap(obj.kl_to_standard_normal)(mu_z, lv_z)) + jnp.sum(
            jax.vmap(obj.kl_to_standard_normal)(mu_u, lv_u)
        )
        loss = -recon + kl
        return loss, {"loss": loss, "elbo": recon - kl, "recon": recon, "kl": kl}
