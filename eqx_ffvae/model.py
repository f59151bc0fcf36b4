"""The Flow Factorized VAE: encoder, decoder, K latent flows, diffusion prior (docs/method.md §2–§4)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from einops import rearrange
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

from . import distributions as dist
from . import objectives as obj
from .conv import ConvImpl
from .flow_model import AbstractPotentialFlowModel, DensityForm
from .flows import FlowSettings, LaplacianMethod
from .interfaces import Terms, mean_sequence_loss
from .layout import Layout, flow_rows, row_potentials
from .nn import (
    AbstractDecoder,
    AbstractEncoder,
    ConvDecoder,
    ConvEncoder,
    SequenceEncoder,
)
from .pixels import PixelLikelihoodName, pixel_likelihood
from .potentials import PotentialBank
from .prior import DiffusionPrior
from .sde import sde_path

FlowObjective = Literal["marginal", "path"]


@dataclasses.dataclass(frozen=True)
class FFVAEConfig:
    """Every architectural and objective choice of the model; hashable, so it is static under jit.

    `flow_kl_weight` scales the T flow-KL terms (1 = the ELBO of docs/method.md §4); `hj_initial_weight` is
    the optional initial-condition term (the reference code uses 1; off by default here because it
    pushes ∇u(z, 0), the first Euler step, towards zero). `laplacian="hvp"` (d Hessian-vector products)
    and `"hessian"` (trace of `jax.hessian`) are exact references; "exact" is the faster forward-mode trace.
    How the training step lays the batch out in memory is not part of the model: see
    `training.make_step(slice_size=...)`.

    `density`: how training tracks log q_t along a flow. "trace" (default; fast, the batched path of
    the training step): the Euler step of the ODE's density, −h Δu per step, which is not the Euler
    map's density, so the flow-KL term is not a KL (docs/method.md §3) and at flow-KL weight 1 training
    drives it to −∞ (results/mnist/learning_curves.json). "map": the Euler map's exact
    −log|det(I + h∇²u)| (a Hessian and an LU factorisation per step; the per-sequence `loss`).

    `objective`: "marginal" (default) is the literal ELBO of docs/method.md §4 with per-frame KLs
    KL[q_t ‖ p^k_t]; "path" is the path-space ELBO (`ffvae-sde`): the posterior is the SDE
    dz = ∇u^k dt + √(2D_k) dW, the flow term the exact path KL E ∫ ‖∇u^k‖²/(4D_k) dt (`sde.sde_path`),
    and `density` plays no part in training. `kl0_per_frame` weights KL[q(z_0|x_0) ‖ N(0, I)] by the
    number of frames T+1: the rate tax of the literal ELBO, put on a rollout VAE (`ffvae-rollout-kl0`).
    """

    image_shape: tuple[int, int, int] = (3, 28, 28)
    num_frames: int = 9
    latent_dim: int = 32
    num_flows: int = 3
    width: int = 32
    potential_width: int = 128
    potential_depth: int = 2
    time_dim: int = 16
    laplacian: LaplacianMethod = "exact"
    num_probes: int = 1
    steps_per_frame: int = 1
    hj_weight: float = 1.0
    hj_initial_weight: float = 0.0
    flow_kl_weight: float = 1.0
    prior_diffusion_init: float = 1.0
    weakly_supervised: bool = False
    group_supervised: bool = False
    min_flow_share: float = 0.5
    conv_impl: ConvImpl = "fast"
    density: DensityForm = "trace"
    objective: FlowObjective = "marginal"
    kl0_per_frame: bool = False
    likelihood: PixelLikelihoodName = "bernoulli"
    pixel_scale: float | None = None

    @property
    def infers_flow(self) -> bool:
        """Whether k is not observed, so the model carries q(k | x̄) and is scored by what it infers."""
        return self.weakly_supervised or self.group_supervised

    def __post_init__(self):
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be ≥ 2 (x_0 and at least one transformed frame), got {self.num_frames}")
        if self.steps_per_frame < 1:
            raise ValueError(f"steps_per_frame must be ≥ 1, got {self.steps_per_frame}")
        if not 0.0 <= self.min_flow_share <= 1.0:
            raise ValueError(
                f"min_flow_share must be in [0, 1] (a fraction of each flow's fair share B/K), got {self.min_flow_share}"
            )
        if self.density not in ("trace", "map"):
            raise ValueError(f"density must be 'trace' or 'map', got {self.density!r}")
        if self.objective not in ("marginal", "path"):
            raise ValueError(f"objective must be 'marginal' or 'path', got {self.objective!r}")
        if self.objective == "path" and self.group_supervised:
            raise ValueError(
                "objective='path' is not defined for the group-supervised variant (its flows are Gumbel-weighted "
                "combinations); use weakly_supervised=True"
            )
        if self.weakly_supervised and self.group_supervised:
            raise ValueError("weakly_supervised and group_supervised exclude each other: pick one way to infer k")
        pixel_likelihood(self.likelihood, self.image_shape[0], self.pixel_scale)  # raises on a bad choice


class AbstractFFVAE(AbstractPotentialFlowModel):
    """The Flow Factorized VAE's shared body: `loss(x̄, k, key)` is THE definition of its objective on one
    sequence (k observed); the final classes differ in what they observe of k and so in their batch
    objective: `FlowFactorizedVAE` (k observed), `ffvae_inference.WeakFFVAE` (k inferred, a bound on
    log p(x̄)) and `ffvae_inference.GroupFFVAE` (the authors' group-supervised variant).
    """

    prior: eqx.AbstractVar[DiffusionPrior]
    config: eqx.AbstractVar[FFVAEConfig]

    @property
    def flow_settings(self) -> FlowSettings:
        c = self.config
        return FlowSettings(1.0 / c.steps_per_frame, c.laplacian, c.num_probes, path_divergence=c.laplacian)

    @property
    def density(self) -> DensityForm:
        return self.config.density

    def frame_log_likelihoods(self, zs: Float[Array, "n d"], x_seq: Float[Array, "n ..."]) -> Float[Array, " n"]:
        """log p(x_t | z_t) of each frame (the decoder's memory-bounded loop over frames)."""
        return self.decoder.log_likelihoods(zs, x_seq)

    def prior_log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return self.prior.log_prob(k, t, z)

    def latent_terms(self, mu: Array, logvar: Array, zs: Array, logqs: Array, k: Int[ArrayLike, ""]) -> Terms:
        """Every loss term of one sequence but the reconstruction, from its latent path along flow k.

        The HJ terms use the one-hot combination of all K potentials and forces: at the T collocation
        points that is a few matmuls over all K weights rather than a per-sequence copy of flow k's.
        """
        return self.path_terms(mu, logvar, zs, self._marginal_kl_frames(k, zs, logqs), k)

    def _marginal_kl_frames(self, k: Int[ArrayLike, ""], zs: Array, logqs: Array) -> Array:
        """log q_t(z_t) − log p^k_t(z_t) at frames 1…T: the literal ELBO's flow term per frame."""
        log_prior = jax.vmap(self.prior.log_prob, in_axes=(None, 0, 0))(k, self.frame_times[1:], zs[1:])
        return logqs[1:] - log_prior

    def path_terms(self, mu: Array, logvar: Array, zs: Array, kl_frames: Array, k: Int[ArrayLike, ""]) -> Terms:
        """Every loss term of one sequence but the reconstruction, from its latent path along flow k and
        the flow term of each frame 1…T (`flow_path`)."""
        onehot = jax.nn.one_hot(k, self.config.num_flows, dtype=zs.dtype)
        return self._weighted_terms(mu, logvar, zs, kl_frames, onehot)

    def _weighted_terms(self, mu: Array, logvar: Array, zs: Array, kl_frames: Array, weights: Array) -> Terms:
        """The terms of `path_terms` for the flow Σ_k w_k u^k. `kl_t{t}` is frame t's share of the flow
        term (marginal objective: the MC estimate of KL[q_t ‖ p^k_t]; path objective: the path KL over
        (t−1, t]); they are logged so that the rate tax of docs/method.md §4 can be read per frame."""
        ts = self.frame_times
        pot, force = self.flows.combined(weights), self.flows.combined_force(weights)
        colloc = jax.lax.stop_gradient(zs)
        return {
            "kl0": dist.kl_to_standard_normal(mu, logvar),
            "kl_flow": jnp.sum(kl_frames),
            "hj": obj.hj_loss(pot, force, ts[:-1], colloc[:-1]),
            "hj_initial": obj.hj_initial_loss(pot, force, colloc[0]),
            **{f"kl_t{t + 1}": kl_frames[t] for t in range(kl_frames.shape[0])},
        }

    def flow_path(
        self, k: Int[ArrayLike, ""], z0: Float[Array, " d"], logq0: ScalarLike, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n d"], Float[Array, " t"]]:
        """The training path of z_0 along flow k over the frame times and the flow term of each frame 1…T.

        "marginal": the density solve (`transport_density`) and log q_t(z_t) − log p^k_t(z_t);
        "path": one draw of the posterior SDE (`sde.sde_path`, key: its Brownian path) and the path KL
        of each frame interval."""
        ts = self.frame_times
        if self.config.objective == "path":
            diffusion = self.prior.diffusion[k]
            zs, kls = sde_path(self.flows.potential(k), z0, ts, diffusion, key=key, dt0=self.flow_settings.dt0)
            return zs, kls[1:] - kls[:-1]
        zs, logqs = self.transport_density(k, z0, logq0, ts, key=key)
        return zs, self._marginal_kl_frames(k, zs, logqs)

    def objective(self, recon: Scalar, terms: Terms) -> tuple[Scalar, Terms]:
        """−ELBO (docs/method.md §4) + λ_HJ · HJ residual from the summed log-likelihood and the other terms."""
        c = self.config
        kl0, kl_flow = terms["kl0"], terms["kl_flow"]
        kl0_weight = c.num_frames if c.kl0_per_frame else 1.0
        loss = -(recon - kl0_weight * kl0 - c.flow_kl_weight * kl_flow) + c.hj_weight * terms["hj"]
        loss = loss + c.hj_initial_weight * terms["hj_initial"]
        return loss, {"loss": loss, "elbo": recon - kl0 - kl_flow, "recon": recon, **terms}

    def loss(self, x_seq: Float[Array, "n ..."], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """Supervised loss of one sequence: −ELBO (docs/method.md §4) + λ_HJ · HJ residual; and its terms."""
        mu, logvar, z0, logq0, probe_key = self.sample_z0(x_seq[0], key)
        zs, kl_frames = self.flow_path(k, z0, logq0, probe_key)
        terms = self.path_terms(mu, logvar, zs, kl_frames, k)
        return self.objective(jnp.sum(self.frame_log_likelihoods(zs, x_seq)), terms)

    def supervised_batch_loss(
        self, frames: Float[Array, "b n *x"], ks: Int[Array, " b"], *, key: PRNGKeyArray, layout: Layout | None
    ) -> tuple[Scalar, Terms]:
        """The mean of `loss` over the batch (one key per sequence, `mean_sequence_loss`'s split). With a
        `layout`, the literal ELBO on the trace density is computed in its slices (`_laid_out_mean_loss`).
        The map density and the path objective keep the per-sequence definition: the path objective's
        posterior is an SDE driven by each row's own Brownian path, which one ODE over the rows
        (`layout.flow_rows`) does not carry (its cost: docs/performance.md). A layout changes memory and
        speed, never the numbers."""
        if layout is not None and self.config.objective == "marginal" and self.density == "trace":
            return self._laid_out_mean_loss(frames, ks, key=key, layout=layout)
        return mean_sequence_loss(self, frames, ks, key=key)

    def _laid_out_mean_loss(
        self, frames: Float[Array, "b n *x"], ks: Int[Array, " b"], *, key: PRNGKeyArray, layout: Layout
    ) -> tuple[Scalar, Terms]:
        """`mean_sequence_loss` laid out: the flows of `layout.rows(b)` sequences at a time are one ODE
        (`layout.flow_rows`), the decoder's likelihood is summed slice by slice with its gradient taken
        inside the loop (`ConvDecoder.summed_log_likelihood`). The same numbers, tested in values and
        gradients."""
        b = frames.shape[0]
        keys = jr.split(key, b)
        mu, logvar, z0, logq0, probe_keys = jax.vmap(self.sample_z0)(frames[:, 0], keys)
        rows = layout.rows(b)

        def solve(ks, z0, logq0, keys):
            pots = row_potentials(self.flows, ks)
            return flow_rows(pots, z0, logq0, self.frame_times, settings=self.flow_settings, keys=keys)

        by_rows = lambda a: rearrange(a, "(s r) ... -> s r ...", r=rows)  # noqa: E731
        zs, logqs = jax.tree.map(
            lambda a: rearrange(a, "s r ... -> (s r) ..."),
            jax.lax.map(lambda a: solve(*a), jax.tree.map(by_rows, (ks, z0, logq0, probe_keys))),
        )
        terms = jax.vmap(self.latent_terms)(mu, logvar, zs, logqs, ks)
        by_slice = lambda a: rearrange(a, "(s r) n ... -> s (r n) ...", r=rows)  # noqa: E731
        recon = self.decoder.summed_log_likelihood(by_slice(zs), by_slice(frames), Layout(rows))
        return self.objective(recon / b, jax.tree.map(jnp.mean, terms))


def ffvae_parts(
    config: FFVAEConfig,
    *,
    key: PRNGKeyArray,
    encoder: AbstractEncoder | None = None,
    decoder: AbstractDecoder | None = None,
    flows: PotentialBank | None = None,
    sequence_encoder: eqx.Module | None = None,
):
    """(encoder, decoder, flows, prior, sequence encoder) of an FFVAE, each from its own key (the same
    keys for every variant, so that they start from the same weights); the sequence encoder q(k | x̄) is
    None for a model that observes k. A part given is used as it is (a bank's number of flows must be
    the config's); only the missing ones are built."""
    enc_key, dec_key, flow_key, seq_key = jr.split(key, 4)
    c = config
    if encoder is None:
        encoder = ConvEncoder(c.image_shape, c.latent_dim, c.width, impl=c.conv_impl, key=enc_key)
    if decoder is None:
        decoder = ConvDecoder(
            c.image_shape,
            c.latent_dim,
            c.width,
            pixels=pixel_likelihood(c.likelihood, c.image_shape[0], c.pixel_scale),
            impl=c.conv_impl,
            key=dec_key,
        )
    if flows is None:
        flows = PotentialBank(
            c.num_flows, c.latent_dim, c.potential_width, depth=c.potential_depth, time_dim=c.time_dim, key=flow_key
        )
    elif flows.num_flows != c.num_flows:
        raise ValueError(f"the potential bank given has {flows.num_flows} flows, the config num_flows={c.num_flows}")
    if sequence_encoder is None and c.infers_flow:
        sequence_encoder = SequenceEncoder(
            c.image_shape, c.num_frames, c.num_flows, c.width, impl=c.conv_impl, key=seq_key
        )
    return encoder, decoder, flows, DiffusionPrior(c.num_flows, c.prior_diffusion_init), sequence_encoder


class FlowFactorizedVAE(AbstractFFVAE):
    """The FFVAE with k observed: `encode`/`decode` one frame, `transport` one latent along flow k,
    `loss` one sequence; `batch_loss` is the mean of `loss` over a batch (laid out by `layout`).

    `encoder`, `decoder`, `flows`: your own parts (any `nn.AbstractEncoder` and `nn.AbstractDecoder`,
    e.g. `nn.MLPEncoder`/`nn.MLPDecoder` for vector frames; a `PotentialBank` of your own potential,
    `PotentialBank(..., make_potential=…)`); the config's `latent_dim` and `num_flows` must match
    them, its image shape and widths then size only the parts built here."""

    encoder: AbstractEncoder
    decoder: AbstractDecoder
    flows: PotentialBank
    prior: DiffusionPrior
    config: FFVAEConfig = eqx.field(static=True)

    def __init__(
        self,
        config: FFVAEConfig,
        *,
        key: PRNGKeyArray,
        encoder: AbstractEncoder | None = None,
        decoder: AbstractDecoder | None = None,
        flows: PotentialBank | None = None,
    ):
        if config.infers_flow:
            raise ValueError(
                "FlowFactorizedVAE observes k; a config with weakly_supervised=True or group_supervised=True "
                "builds ffvae_inference.WeakFFVAE or GroupFFVAE (methods ffvae-weak, ffvae-group)"
            )
        parts = ffvae_parts(config, key=key, encoder=encoder, decoder=decoder, flows=flows)
        self.encoder, self.decoder, self.flows, self.prior, _ = parts
        self.config = config

    def batch_loss(
        self,
        frames: Float[Array, "b n *x"],
        ks: Int[Array, " b"],
        *,
        key: PRNGKeyArray,
        step: Int[ArrayLike, ""] | None,
        layout: Layout | None = None,
    ) -> tuple[Scalar, Terms]:
        del step
        return self.supervised_batch_loss(frames, ks, key=key, layout=layout)
