"""The Flow Factorized VAE: encoder, decoder, K latent flows, diffusion prior (docs/method.md §2–§4)."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
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
from .flows import FlowSettings, LaplacianMethod, MapDensity, frame_times, map_density
from .interfaces import AbstractTransportModel, Terms, mean_sequence_loss
from .nn import ConvDecoder, ConvEncoder, SequenceEncoder
from .potentials import AbstractPotential, PotentialBank
from .prior import DiffusionPrior
from .sde import sde_path

DensityForm = Literal["trace", "map"]
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


class AbstractPotentialFlowModel(AbstractTransportModel):
    """A transport model whose flows are the gradients of a `PotentialBank`, starting from a Gaussian
    encoder on x_0: the FFVAE and PoFlow. Concrete (final) here: drawing z_0, the paths, composition,
    the density solve and the importance proposal "z_0 ~ q(z_0|x_0) carried along flow k with its
    exact log-density" (docs/method.md §5). A subclass gives the encoder, decoder, bank and `flow_settings`
    (the abstract fields are declared in the order of the subclasses' PyTree leaves).
    """

    encoder: eqx.AbstractVar[ConvEncoder]
    decoder: eqx.AbstractVar[ConvDecoder]
    flows: eqx.AbstractVar[PotentialBank]

    @property
    @abc.abstractmethod
    def flow_settings(self) -> FlowSettings:
        """Step size and divergence methods of this model's solves."""

    @property
    def num_flows(self) -> int:
        return self.flows.num_flows

    @property
    def frame_times(self) -> Float[ArrayLike, " n"]:
        """The integer times 0, 1, …, T at which the frames sit."""
        return frame_times(self.config.num_frames)

    def encode(self, x: Float[Array, "c h w"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        return self.encoder(x)

    def decode(self, z: Float[Array, " d"]) -> Float[Array, "c h w"]:
        return self.decoder(z)

    def proposal_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "c h w"]) -> Scalar:
        return dist.bernoulli_log_likelihood(self.decode(z), x)

    def sample_z0(self, x0: Float[Array, "c h w"], key: PRNGKeyArray):
        """(mu, logvar) of q(z_0 | x_0), a draw z_0 with its log-density, and the key for the flow's probes."""
        sample_key, probe_key = jr.split(key)
        mu, logvar = self.encode(x0)
        z0, logq0 = dist.gaussian_draw(mu, logvar, sample_key)
        return mu, logvar, z0, logq0, probe_key

    def transport_density(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        ts: Float[ArrayLike, " n"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """(z_t, log q_t(z_t)) at each time in ts along flow k (key: Hutchinson probes, if used).

        A model whose config asks for `density="map"` returns the Euler map's positions with its exact
        density (`map_density`; ts must then be the frame times 0…n−1): the consistent pair of
        docs/method.md §3 (i), at the cost of a Hessian and an LU factorisation per step."""
        return self.potential_density(self.flows.potential(k), z0, logq0, ts, key=key)

    def potential_density(
        self,
        pot: AbstractPotential,
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        ts: Float[ArrayLike, " n"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """(z_t, log q_t(z_t)) along any potential's flow (one of the bank's, or a combination), by
        the model's `density`: the flow settings' solve ("trace") or the Euler map's exact density
        ("map"; ts must be the frame times 0…n−1)."""
        if self.density == "map":
            path = map_density(pot, z0, logq0, ts.shape[0], self.flow_settings.steps_per_frame, eigenvalues=False)
            return path.zs, path.logqs
        return self.flow_settings.density(pot, z0, logq0, ts, key)

    @property
    @abc.abstractmethod
    def density(self) -> DensityForm:
        """How `transport_density` tracks log q_t: "trace" (the Euler step of the ODE's density, −h Δu
        per step) or "map" (the Euler map's exact −log|det(I + h∇²u)|)."""

    def transport(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """The latent path of flow k from z0 at times ts (default: the frame times 0…T)."""
        ts = self.frame_times if ts is None else ts
        return self.flow_settings.path(self.flows.potential(k), z0, ts, key)

    def compose(
        self,
        weights: Float[Array, " k"],
        z0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """Several flows at once: dz/dt = Σ_k w_k ∇u^k (paper Fig. 6)."""
        ts = self.frame_times if ts is None else ts
        return self.flow_settings.path(self.flows.combined(weights), z0, ts, key)

    @property
    def proposal_steps_per_frame(self) -> int:
        """Euler steps per frame of the likelihood's proposal map: 4 (at least the model's own).

        The trained map (one step per frame) need not be invertible — on the quick preset I + ∇²u has
        eigenvalues < 0 (down to −0.38) — and then log|det| is not its density. A finer Euler map of the
        same flow is a proposal with an exact density wherever I + h∇²u stays positive definite
        (evaluation reports its smallest eigenvalue, `proposal_min_eigenvalue`); any proposal with an
        exact density gives an unbiased likelihood. Each halving of h doubles the proposal's Hessians.
        """
        return max(4, self.flow_settings.steps_per_frame)

    def map_density(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        steps_per_frame: int | None = None,
        *,
        eigenvalues: bool = True,
    ) -> MapDensity:
        """Flow k's Euler map from z0 over the frame times with its exact log-density (docs/method.md §3): by
        default the trained map (the positions of `transport_density`, log q_t falling by
        log|det(I + h∇²u)| instead of h Δu); `steps_per_frame` refines it."""
        steps = self.flow_settings.steps_per_frame if steps_per_frame is None else steps_per_frame
        return map_density(self.flows.potential(k), z0, logq0, self.config.num_frames, steps, eigenvalues=eigenvalues)

    def importance_proposal(
        self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """One draw z_0 ~ q(z_0|x_0) carried by flow k's Euler map at `proposal_steps_per_frame` to every
        frame, with its exact log-density (`map_density`): points and density of one map."""
        _, _, z0, logq0, _ = self.sample_z0(x_seq[0], key)
        path = self.map_density(k, z0, logq0, self.proposal_steps_per_frame, eigenvalues=False)
        return path.zs, path.logqs

    def frame_proposal(self, x: Float[Array, "c h w"], *, key: PRNGKeyArray) -> tuple[Float[Array, " d"], Scalar]:
        return dist.gaussian_draw(*self.encode(x), key)


class FlowFactorizedVAE(AbstractPotentialFlowModel):
    """`encode`/`decode` one image, `transport` one latent along flow k, `loss` one sequence.

    `loss(x̄, k, key)` is THE definition of the objective; `batch_loss` is its mean over a batch (or
    the weak / group objective built on it). The training step computes the same numbers with a
    memory-laid-out batched path (the private `_batched` module), tested equal to these definitions.
    """

    encoder: ConvEncoder
    decoder: ConvDecoder
    flows: PotentialBank
    prior: DiffusionPrior
    sequence_encoder: SequenceEncoder | None
    config: FFVAEConfig = eqx.field(static=True)

    def __init__(self, config: FFVAEConfig, *, key: PRNGKeyArray):
        enc_key, dec_key, flow_key, seq_key = jr.split(key, 4)
        c = config
        self.encoder = ConvEncoder(c.image_shape, c.latent_dim, c.width, impl=c.conv_impl, key=enc_key)
        self.decoder = ConvDecoder(c.image_shape, c.latent_dim, c.width, impl=c.conv_impl, key=dec_key)
        self.flows = PotentialBank(
            c.num_flows, c.latent_dim, c.potential_width, depth=c.potential_depth, time_dim=c.time_dim, key=flow_key
        )
        self.prior = DiffusionPrior(c.num_flows, c.prior_diffusion_init)
        self.sequence_encoder = (
            SequenceEncoder(c.image_shape, c.num_frames, c.num_flows, c.width, impl=c.conv_impl, key=seq_key)
            if c.infers_flow
            else None
        )
        self.config = config

    @property
    def flow_settings(self) -> FlowSettings:
        c = self.config
        return FlowSettings(1.0 / c.steps_per_frame, c.laplacian, c.num_probes, path_divergence=c.laplacian)

    @property
    def density(self) -> DensityForm:
        return self.config.density

    def frame_log_likelihoods(self, zs: Float[Array, "n d"], x_seq: Float[Array, "n c h w"]) -> Float[Array, " n"]:
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

    def loss(self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """Supervised loss of one sequence: −ELBO (docs/method.md §4) + λ_HJ · HJ residual; and its terms."""
        mu, logvar, z0, logq0, probe_key = self.sample_z0(x_seq[0], key)
        zs, kl_frames = self.flow_path(k, z0, logq0, probe_key)
        terms = self.path_terms(mu, logvar, zs, kl_frames, k)
        return self.objective(jnp.sum(self.frame_log_likelihoods(zs, x_seq)), terms)

    def batch_loss(
        self,
        frames: Float[Array, "b n c h w"],
        ks: Int[Array, " b"],
        *,
        key: PRNGKeyArray,
        step: Int[ArrayLike, ""] | None,
    ) -> tuple[Scalar, Terms]:
        """The training objective of a batch: the mean of `loss` (k observed), `weak_batch_loss` (k
        inferred; `ks` ignored) or `group_batch_loss` (the authors' variant; `ks` ignored)."""
        if self.config.group_supervised:
            if step is None:
                raise ValueError(
                    "the group-supervised objective needs the training step (its Gumbel temperature): pass step="
                )
            return self.group_batch_loss(frames, step, key=key)
        if self.config.weakly_supervised:
            return self.weak_batch_loss(frames, key=key)
        return mean_sequence_loss(self, frames, ks, key=key)

    def flow_posterior_logits(self, x_seq: Float[Array, "n c h w"]) -> Float[Array, " k"]:
        """Logits of q(k | x̄) (models that infer k only)."""
        if self.sequence_encoder is None:
            raise ValueError(
                "this model has no q(k|x̄); build it with FFVAEConfig(weakly_supervised=True) or group_supervised=True"
            )
        return self.sequence_encoder(x_seq)

    def weak_loss(self, x_seq: Float[Array, "n c h w"], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """The weak bound of one sequence under the model's own q: Σ_k q(k|x̄) loss_k + KL[q(k|x̄) ‖ U(K)].

        The exact expectation over k (docs/method.md §4); −elbo is a lower bound on log p(x̄) for any q. It is the
        definition that `weak_batch_loss` trains through a balanced assignment instead of through q.
        """
        c = self.config
        logits = self.flow_posterior_logits(x_seq)
        kl_k = dist.kl_to_uniform(logits)
        _, terms = jax.vmap(lambda k: self.loss(x_seq, k, key=key))(jnp.arange(c.num_flows))
        q = jax.nn.softmax(logits)
        weighted = {name: q @ value for name, value in terms.items()}
        loss = weighted["loss"] + kl_k
        weighted.update(loss=loss, elbo=weighted["elbo"] - kl_k, kl_k=kl_k)
        return loss, weighted

    def assignment_scores(self, frames: Float[Array, "b n c h w"], *, key: PRNGKeyArray) -> Float[Array, "b k"]:
        """Each sequence's trained objective under each flow, up to a per-sequence constant (no gradient).

        Entry (i, k) is Σ_{t≥1} log p(x_t|z_t) − w·(flow term of `flow_path`) of sequence i carried by flow k, with the z_0 draw
        that `mean_sequence_loss(self, frames, ks, key=key)` makes (the same key split), so every flow is scored on the
        same sample. log p(x_0|z_0) and KL[q(z_0|x_0) ‖ N(0, I)] are common to all flows and left out; so
        is the HJ regulariser, which is not part of the bound and must not steer the assignment (docs/method.md §4).
        """
        c = self.config
        keys = jr.split(key, frames.shape[0])
        _, _, z0, logq0, probe_keys = jax.vmap(self.sample_z0)(frames[:, 0], keys)

        def one_flow(k):
            zs, kl_frames = jax.vmap(lambda z, lq, pk: self.flow_path(k, z, lq, pk))(z0, logq0, probe_keys)
            return zs[:, 1:], jnp.sum(kl_frames, axis=1)

        zs, kl_flow = jax.vmap(one_flow)(jnp.arange(c.num_flows))  # (K, B, T, d), (K, B)
        # Frame 0 decodes the same z_0 under every flow: a constant per sequence, left out. One slice
        # per (flow, frame time): the batch's frames at that time.
        targets = jnp.broadcast_to(frames[None, :, 1:], (c.num_flows, *frames[:, 1:].shape))
        recon = self.decoder.sliced_log_likelihoods(
            rearrange(zs, "k b t d -> (k t) b d"), rearrange(targets, "k b t c h w -> (k t) b c h w")
        )
        recon = rearrange(recon, "(k t) b -> k b t", k=c.num_flows)
        scores = jnp.sum(recon, axis=2) - c.flow_kl_weight * kl_flow
        return jax.lax.stop_gradient(scores.T)

    def weak_batch_loss(
        self, frames: Float[Array, "b n c h w"], *, key: PRNGKeyArray, supervised: SupervisedBatchLoss | None = None
    ) -> tuple[Scalar, Terms]:
        """Weakly supervised training loss of a batch: variational EM with a balanced E-step.

        E-step (no gradient): the B×K matrix of `assignment_scores` → the assignment P that maximises
        Σ_ik P_ik score_ik + H(P) with every row a distribution over k and every flow given at least
        `min_flow_share` of its fair share B/K of the batch (`objectives.balanced_assignment`, at
        temperature 1 nat: P is the posterior of k, with the smallest per-flow log-prior boost that meets
        those minimums; once the flows have specialised the posterior meets them by itself and P is the
        plain posterior). M-step: the supervised loss of each sequence under a flow
        k_i ~ P_i, an unbiased estimate of Σ_k P_ik loss_k. For any distribution P_i,
        Σ_k P_ik ELBO_k − KL[P_i ‖ U] ≤ log p(x̄_i), so the model is trained on a lower bound whatever P is.
        q(k | x̄) is the amortised E-step: trained to predict P by KL[P ‖ q] (`q_distill`), it takes no
        gradient from the bound and gives none to it. The minimum share is what prevents the collapse of
        the gated sum Σ_k q_k ELBO_k: every flow learns from part of every batch, so none is starved.
        Exact balance (min_flow_share = 1) works too but forces the batch's random excess of one
        transformation onto another flow (~10% of sequences at B = 32 measured, and E_k paid for it).
        Cost: one supervised step plus K forward passes of flow and decoder.

        `supervised(frames, ks, key)`: the M-step's batch loss, by default the mean of `loss`; the
        training step passes its memory-laid-out equal.
        """
        c = self.config
        loss_key, assign_key = jr.split(key)
        scores = self.assignment_scores(frames, key=loss_key)
        log_p = obj.balanced_assignment(scores, c.min_flow_share)
        ks = jr.categorical(assign_key, log_p)
        if supervised is None:
            loss, terms = mean_sequence_loss(self, frames, ks, key=loss_key)
        else:
            loss, terms = supervised(frames, ks, loss_key)
        logq = jax.nn.log_softmax(jax.vmap(self.flow_posterior_logits)(frames))
        p = jnp.exp(log_p)
        distill = jnp.mean(jnp.sum(p * (log_p - logq), axis=1))
        kl_p = jnp.mean(jnp.sum(p * (log_p + jnp.log(c.num_flows)), axis=1))
        return loss + distill, {
            **terms,
            "loss": loss + distill,
            "elbo": terms["elbo"] - kl_p,
            "q_distill": distill,
            **_usage_terms(logq),
        }

    def group_batch_loss(
        self, frames: Float[Array, "b n c h w"], step: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Scalar, Terms]:
        """The authors' group-supervised objective (their `trainer_ot_scratch_weakly.py`), for comparison.

        Every sequence of the batch shares one transformation (the sampler's promise: more than weak
        supervision). Each sequence's flow weights are a hard straight-through Gumbel-softmax sample
        y_i of q(k | x̄_i) at temperature max(exp(−3·10⁻⁵·step), 0.05); its latent follows Σ_k y_ik ∇u^k
        (flow argmax y_i forward, gradients into q through the combination); plus the batch-agreement term
        −log q̄_B[argmax q̄_B] of the batch-mean y. No KL to p(k). Not a bound on log p(x̄).
        """
        c = self.config
        b = frames.shape[0]
        gumbel_key, loss_key = jr.split(key)
        logits = jax.vmap(self.flow_posterior_logits)(frames)
        temperature = jnp.maximum(jnp.exp(-3e-5 * jnp.asarray(step, jnp.float32)), 0.05)
        y_soft = jax.nn.softmax((logits + jr.gumbel(gumbel_key, logits.shape)) / temperature)
        y_hard = jax.nn.one_hot(jnp.argmax(y_soft, axis=1), c.num_flows, dtype=y_soft.dtype)
        y = y_hard + y_soft - jax.lax.stop_gradient(y_soft)
        losses, terms = jax.vmap(lambda x, w, kk: self.weighted_loss(x, w, key=kk))(frames, y, jr.split(loss_key, b))
        y_mean = jnp.mean(y, axis=0)
        agreement = -jnp.log(y_mean[jnp.argmax(y_mean)] + 1e-20)
        loss = jnp.mean(losses) + agreement
        return loss, {
            **jax.tree.map(jnp.mean, terms),
            "loss": loss,
            "agreement": agreement,
            "temperature": temperature,
            **_usage_terms(jax.nn.log_softmax(logits)),
        }

    def weighted_loss(
        self, x_seq: Float[Array, "n c h w"], weights: Float[Array, " k"], *, key: PRNGKeyArray
    ) -> tuple[Scalar, Terms]:
        """`loss` with the flow Σ_k w_k u^k, prior Σ_k w_k log p^k_t and force Σ_k w_k f^k (one-hot w: `loss`
        of that k, evaluated with all K potentials, so it is differentiable in w)."""
        mu, logvar, z0, logq0, probe_key = self.sample_z0(x_seq[0], key)
        ts = self.frame_times
        zs, logqs = self.potential_density(self.flows.combined(weights), z0, logq0, ts, key=probe_key)
        per_flow = jax.vmap(lambda k: jax.vmap(self.prior.log_prob, in_axes=(None, 0, 0))(k, ts[1:], zs[1:]))(
            jnp.arange(self.config.num_flows)
        )
        terms = self._weighted_terms(mu, logvar, zs, logqs[1:] - weights @ per_flow, weights)
        return self.objective(jnp.sum(self.frame_log_likelihoods(zs, x_seq)), terms)


SupervisedBatchLoss = Callable[[Array, Array, PRNGKeyArray], tuple[Scalar, Terms]]


def _usage_terms(logq: Float[Array, "b k"]) -> Terms:
    """What a batch's q(k | x̄) says about collapse, for the logs: per-flow usage (batch mean of q),
    the mean entropy of q and KL[usage ‖ uniform] (0 when balanced, log K at collapse)."""
    q = jnp.exp(logq)
    usage = jnp.mean(q, axis=0)
    return {
        "q_entropy": jnp.mean(-jnp.sum(q * logq, axis=1)),
        "usage_kl": dist.usage_kl(usage),
        **{f"usage_{k}": usage[k] for k in range(logq.shape[1])},
    }
