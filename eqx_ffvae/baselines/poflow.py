"""PoFlow (Song et al., ICML 2023, "Latent traversals in generative models as potential flows"):
K potentials whose gradients move the latent, regularised by a wave-equation residual, with a
classifier that must tell the K flows apart from the latent steps they make."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

from .. import distributions as dist
from ..flow_model import AbstractPotentialFlowModel
from ..flows import FlowSettings
from ..interfaces import Terms, mean_sequence_loss
from ..layout import Layout
from ..nn import ConvDecoder, ConvEncoder
from ..potentials import AbstractPotential, PotentialBank
from .base import BaselineConfig, conv_pair


@dataclasses.dataclass(frozen=True)
class PoFlowConfig(BaselineConfig):
    """Potentials as the FFVAE's (MLP on [z; emb(t)], tanh), Euler dt = 1 per frame; learned wave
    speeds c_k = softplus(·), initialised at 1; the classifier is an MLP on one latent step z_t − z_{t−1}.
    Encoder/decoder trained jointly (ELBO of x_0 plus the reconstruction of every flowed frame).

    `protocol`: "sequence" (default) trains on every frame of the sequence, as the FFVAE does;
    "authors" is the PoFlow authors' VAE protocol (PDETraversal's MNIST trainer): one random step t
    per batch, the rolled latent z̃_{t+1} decoded to reconstruct x_{t+1}, and the rolled latents
    regressed on the encoder's codes of x_t and x_{t+1} (`PoFlow.authors_loss`).
    """

    potential_width: int = 128
    potential_depth: int = 2
    time_dim: int = 16
    classifier_width: int = 128
    wave_weight: float = 1.0
    classifier_weight: float = 1.0
    wave_speed_init: float = 1.0
    protocol: Literal["sequence", "authors"] = "sequence"

    def __post_init__(self):
        super().__post_init__()
        if self.protocol not in ("sequence", "authors"):
            raise ValueError(f"protocol must be 'sequence' or 'authors', got {self.protocol!r}")


def wave_residual(pot: AbstractPotential, speed: ScalarLike, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
    """∂²_t u − c² Δ_z u at one (t, z): zero where u solves the wave equation."""
    t = jnp.asarray(t, z.dtype)
    u_tt = jax.grad(jax.grad(pot, argnums=0), argnums=0)(t, z)
    return u_tt - speed**2 * pot.grad_and_laplacian(t, z)[1]


def classifier_loss(classifier: eqx.Module, steps: Float[Array, "n d"], k: Int[ArrayLike, ""]) -> Scalar:
    """Mean cross-entropy of naming flow k from each of its latent steps."""
    logp = jax.vmap(lambda s: jax.nn.log_softmax(classifier(s)))(steps)
    return -jnp.mean(logp[:, k])


class PoFlow(AbstractPotentialFlowModel):
    """The potential bank, paths, composition and importance proposal are the FFVAE's
    (`AbstractPotentialFlowModel`); PoFlow adds only its wave speeds, wave residual and classifier."""

    encoder: ConvEncoder
    decoder: ConvDecoder
    flows: PotentialBank
    raw_speed: Float[Array, " k"]
    classifier: eqx.nn.MLP
    config: PoFlowConfig = eqx.field(static=True)

    def __init__(self, config: PoFlowConfig, *, key: PRNGKeyArray):
        pair_key, pot_key, cls_key = jr.split(key, 3)
        c = config
        self.encoder, self.decoder = conv_pair(c, c.latent_dim, key=pair_key)
        self.flows = PotentialBank(
            c.num_flows,
            c.latent_dim,
            c.potential_width,
            depth=c.potential_depth,
            time_dim=c.time_dim,
            with_forces=False,
            key=pot_key,
        )
        inv_softplus = math.log(math.expm1(c.wave_speed_init))
        self.raw_speed = jnp.full((c.num_flows,), inv_softplus, jnp.float32)
        self.classifier = eqx.nn.MLP(
            c.latent_dim, c.num_flows, c.classifier_width, 2, activation=jax.nn.gelu, key=cls_key
        )
        self.config = config

    @property
    def flow_settings(self) -> FlowSettings:
        """Euler, dt = 1: z_t = z_{t−1} + ∇u^k(t−1, z_{t−1}); paths move z only, densities use the exact Δu."""
        return FlowSettings(1.0, "exact", path_divergence="none")

    @property
    def density(self) -> str:
        """The Euler step's trace form (PoFlow's training needs no density; its proposal uses the map)."""
        return "trace"

    def prior_log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        """N(0, I) at every frame: PoFlow has no prior of its own along the flows."""
        del k, t
        return dist.standard_normal_log_prob(z)

    def wave_speed(self, k: Int[ArrayLike, ""]) -> Scalar:
        return jax.nn.softplus(self.raw_speed[k])

    def loss(self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """The objective of one sequence under the config's `protocol`: "sequence" is `sequence_loss`;
        "authors" is `authors_loss` at a step t drawn from `key` (`batch_loss` draws one t per batch)."""
        if self.config.protocol == "authors":
            t_key, key = jr.split(key)
            return self.authors_loss(x_seq, k, jr.randint(t_key, (), 0, x_seq.shape[0] - 1), key=key)
        return self.sequence_loss(x_seq, k, key=key)

    def sequence_loss(
        self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Scalar, Terms]:
        """−Σ_t log p(x_t | z_t) + KL[q(z_0|x_0) ‖ N(0, I)] + λ_w · wave residual² + λ_c · classifier CE."""
        c = self.config
        mu, logvar = self.encode(x_seq[0])
        zs = self.transport(k, dist.gaussian_sample(mu, logvar, key))
        recon = jnp.sum(self.decoder.log_likelihoods(zs, x_seq))
        kl = dist.kl_to_standard_normal(mu, logvar)
        wave = self._wave(k, zs)
        cls = classifier_loss(self.classifier, zs[1:] - zs[:-1], k)
        loss = -recon + kl + c.wave_weight * wave + c.classifier_weight * cls
        return loss, {"loss": loss, "elbo": recon - kl, "recon": recon, "kl0": kl, "wave": wave, "classifier": cls}

    def authors_loss(
        self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], t: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Scalar, Terms]:
        """The PoFlow authors' objective of one sequence at step t (0 ≤ t < T):

        −ELBO(x_0) − log p(x_{t+1} | z̃_{t+1}) + KL[q(z|x_{t+1}) ‖ N(0, I)]
        + mean((z_{t+1} − z_t + z̃_t − z̃_{t+1})²) + mean((z_t − z̃_t)²) + λ_w · wave residual²
        (+ λ_c · classifier CE, weight 0 in the registered "poflow-authors"),

        where z̃_s are the latents rolled from z ~ q(z|x_0) along flow k and z_t, z_{t+1} are the
        encoder's samples of x_t and x_{t+1}. Only frames 0, t and t+1 are seen."""
        c = self.config
        k0, kt, kt1 = jr.split(key, 3)
        mu0, logvar0 = self.encode(x_seq[0])
        z = dist.gaussian_sample(mu0, logvar0, k0)
        zs = self.transport(k, z)
        x_t, x_t1 = x_seq[t], x_seq[t + 1]
        mu_t, logvar_t = self.encode(x_t)
        mu_t1, logvar_t1 = self.encode(x_t1)
        z_t, z_t1 = dist.gaussian_sample(mu_t, logvar_t, kt), dist.gaussian_sample(mu_t1, logvar_t1, kt1)
        rolled_t, rolled_t1 = zs[t], zs[t + 1]
        recon0 = self.decoder.output_log_likelihood(self.decode(z), x_seq[0])
        kl0 = dist.kl_to_standard_normal(mu0, logvar0)
        recon_t1 = self.decoder.output_log_likelihood(self.decode(rolled_t1), x_t1)
        kl_t1 = dist.kl_to_standard_normal(mu_t1, logvar_t1)
        latent = jnp.mean((z_t1 - z_t + rolled_t - rolled_t1) ** 2) + jnp.mean((z_t - rolled_t) ** 2)
        wave = self._wave(k, zs)
        cls = classifier_loss(self.classifier, zs[1:] - zs[:-1], k)
        loss = -recon0 + kl0 - recon_t1 + kl_t1 + latent + c.wave_weight * wave + c.classifier_weight * cls
        terms = {
            "loss": loss,
            "elbo": recon0 - kl0,
            "recon": recon0 + recon_t1,
            "kl0": kl0,
            "latent_regression": latent,
            "wave": wave,
            "classifier": cls,
        }
        return loss, terms

    def _wave(self, k: Int[ArrayLike, ""], zs: Float[Array, "n d"]) -> Scalar:
        """Mean squared wave residual of u^k at the path's points (held fixed) and frame times."""
        pot, speed = self.flows.potential(k), self.wave_speed(k)
        colloc = jax.lax.stop_gradient(zs[:-1])
        return jnp.mean(jax.vmap(lambda t, z: wave_residual(pot, speed, t, z) ** 2)(self.frame_times[:-1], colloc))

    def batch_loss(
        self,
        frames: Float[Array, "b n c h w"],
        ks: Int[Array, " b"],
        *,
        key: PRNGKeyArray,
        step: Int[ArrayLike, ""] | None,
        layout: Layout | None = None,
    ) -> tuple[Scalar, Terms]:
        """The mean of `loss` over the batch; under the authors' protocol, at ONE step t for the whole
        batch (drawn from `key`), as their trainer does."""
        del step, layout
        if self.config.protocol == "authors":
            t_key, key = jr.split(key)
            t = jr.randint(t_key, (), 0, frames.shape[1] - 1)
            keys = jr.split(key, frames.shape[0])
            losses, terms = jax.vmap(lambda x, k, kk: self.authors_loss(x, k, t, key=kk))(frames, ks, keys)
            return jnp.mean(losses), jax.tree.map(jnp.mean, terms)
        return mean_sequence_loss(self, frames, ks, key=key)
