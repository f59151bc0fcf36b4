"""The Flow Factorized VAE: encoder, decoder, K latent flows, diffusion prior (SPEC §2–§4)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, Key, PRNGKeyArray, Scalar, ScalarLike

from . import objectives as obj
from .conv import ConvImpl
from .flows import LaplacianMethod, flow
from .gradloop import slice_rows
from .metrics import frame_times
from .nn import ConvDecoder, ConvEncoder, SequenceEncoder
from .potentials import AbstractPotential, PotentialBank
from .prior import DiffusionPrior


@dataclasses.dataclass(frozen=True)
class FFVAEConfig:
    """Every architectural and objective choice of the model; hashable, so it is static under jit.

    `flow_kl_weight` scales the T flow-KL terms (1 = the ELBO of SPEC §4); `hj_initial_weight` is
    the optional initial-condition term (the reference code uses 1; off by default here because it
    pushes ∇u(z, 0), the first Euler step, towards zero). `laplacian="hvp"` (d Hessian-vector products)
    and `"hessian"` (trace of `jax.hessian`) are exact references; "exact" is the faster forward-mode trace.
    `slice_size`: `batch_loss` solves the flows this many sequences at a time (the largest divisor of
    the batch size up to it), and decodes their frames in slices of as many frames; peak memory grows
    with it, results do not change. The default 16 was the fastest on a 2-core CPU at every measured
    size (d = 32 to 324); a GPU wants the whole batch in one slice.
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
    weak_estimator: Literal["exact", "gumbel"] = "exact"
    gumbel_temperature: float = 1.0
    conv_impl: ConvImpl = "fast"
    slice_size: int = 16

    def __post_init__(self):
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be ≥ 2 (x_0 and at least one transformed frame), got {self.num_frames}")
        if self.slice_size < 1:
            raise ValueError(f"slice_size must be ≥ 1 sequence, got {self.slice_size}")
        if self.steps_per_frame < 1:
            raise ValueError(f"steps_per_frame must be ≥ 1, got {self.steps_per_frame}")
        if self.weak_estimator not in ("exact", "gumbel"):
            raise ValueError(f"weak_estimator must be 'exact' or 'gumbel', got {self.weak_estimator!r}")


class FlowFactorizedVAE(eqx.Module):
    """`encode`/`decode` one image, `transport` one latent along flow k, `loss` one sequence."""

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
            if c.weakly_supervised
            else None
        )
        self.config = config

    @property
    def frame_times(self) -> Float[Array, " n"]:
        """The integer times 0, 1, …, T at which the frames sit."""
        return frame_times(self.config.num_frames)

    def encode(self, x: Float[Array, "c h w"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        return self.encoder(x)

    def decode(self, z: Float[Array, " d"]) -> Float[Array, "c h w"]:
        return self.decoder(z)

    def frame_log_likelihoods(self, zs: Float[Array, "n d"], x_seq: Float[Array, "n c h w"]) -> Float[Array, " n"]:
        """log p(x_t | z_t) of each frame (the decoder's memory-bounded loop over frames)."""
        return self.decoder.log_likelihoods(zs, x_seq)

    def _solve(
        self,
        pot: AbstractPotential,
        z0: Array,
        logq0: ScalarLike | Float[Array, " b"],
        ts: Array,
        key: PRNGKeyArray | Key[Array, " b"] | None,
        batch_axes: int | AbstractPotential | None = None,
    ) -> tuple[Array, Array]:
        c = self.config
        return flow(
            pot,
            z0,
            logq0,
            ts,
            dt0=1.0 / c.steps_per_frame,
            divergence=c.laplacian,
            key=key,
            num_probes=c.num_probes,
            batch_axes=batch_axes,
        )

    def transport_density(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        ts: Float[Array, " n"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """(z_t, log q_t(z_t)) at each time in ts along flow k (key: Hutchinson probes, if used)."""
        return self._solve(self.flows.potential(k), z0, logq0, ts, key)

    def transport(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        ts: Float[Array, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """The latent path of flow k from z0 at times ts (default: the frame times 0…T)."""
        ts = self.frame_times if ts is None else ts
        return self._solve(self.flows.potential(k), z0, 0.0, ts, key)[0]

    def compose(
        self,
        weights: Float[Array, " k"],
        z0: Float[Array, " d"],
        ts: Float[Array, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """Several flows at once: dz/dt = Σ_k w_k ∇u^k (paper Fig. 6)."""
        ts = self.frame_times if ts is None else ts
        return self._solve(self.flows.combined(weights), z0, 0.0, ts, key)[0]

    def prior_log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return self.prior.log_prob(k, t, z)

    def importance_proposal(
        self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """One draw z_0 ~ q(z_0|x_0) carried by flow k to every frame, with its log-density."""
        _, _, z0, logq0, probe_key = self._sample_z0(x_seq[0], key)
        return self.transport_density(k, z0, logq0, self.frame_times, key=probe_key)

    def _sample_z0(self, x0: Float[Array, "c h w"], key: PRNGKeyArray):
        """(mu, logvar) of q(z_0 | x_0), a draw z_0 with its log-density, and the key for the flow's probes."""
        sample_key, probe_key = jr.split(key)
        mu, logvar = self.encode(x0)
        z0 = obj.gaussian_sample(mu, logvar, sample_key)
        return mu, logvar, z0, obj.gaussian_log_prob(z0, mu, logvar), probe_key

    def _latent_terms(
        self, mu: Array, logvar: Array, zs: Array, logqs: Array, k: Int[ArrayLike, ""]
    ) -> dict[str, Scalar]:
        """Every loss term of one sequence but the reconstruction, from its latent path.

        The HJ terms use the one-hot combination of all K potentials and forces: at the T collocation
        points that is a few matmuls over all K weights rather than a per-sequence copy of flow k's.
        """
        ts = self.frame_times
        log_prior = jax.vmap(self.prior.log_prob, in_axes=(None, 0, 0))(k, ts[1:], zs[1:])
        onehot = jax.nn.one_hot(k, self.config.num_flows, dtype=zs.dtype)
        pot, force = self.flows.combined(onehot), self.flows.combined_force(onehot)
        colloc = jax.lax.stop_gradient(zs)
        return {
            "kl0": obj.kl_to_standard_normal(mu, logvar),
            "kl_flow": jnp.sum(logqs[1:] - log_prior),
            "hj": obj.hj_loss(pot, force, ts[:-1], colloc[:-1]),
            "hj_initial": obj.hj_initial_loss(pot, force, colloc[0]),
        }

    def _with_reconstruction(self, recon: Scalar, terms: dict[str, Scalar]) -> tuple[Scalar, dict[str, Scalar]]:
        """−ELBO (SPEC §4) + λ_HJ · HJ residual from the summed log-likelihood and the other terms."""
        c = self.config
        kl0, kl_flow = terms["kl0"], terms["kl_flow"]
        loss = -(recon - kl0 - c.flow_kl_weight * kl_flow) + c.hj_weight * terms["hj"]
        loss = loss + c.hj_initial_weight * terms["hj_initial"]
        return loss, {"loss": loss, "elbo": recon - kl0 - kl_flow, "recon": recon, **terms}

    def loss(
        self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Scalar, dict[str, Scalar]]:
        """Supervised loss of one sequence: −ELBO (SPEC §4) + λ_HJ · HJ residual; and its terms."""
        mu, logvar, z0, logq0, probe_key = self._sample_z0(x_seq[0], key)
        zs, logqs = self.transport_density(k, z0, logq0, self.frame_times, key=probe_key)
        terms = self._latent_terms(mu, logvar, zs, logqs, k)
        return self._with_reconstruction(jnp.sum(self.frame_log_likelihoods(zs, x_seq)), terms)

    def batch_loss(
        self, frames: Float[Array, "b n c h w"], ks: Int[Array, " b"], *, key: PRNGKeyArray
    ) -> tuple[Scalar, dict[str, Scalar]]:
        """The mean of `loss` over a batch (key split into one per sequence), for training.

        Laid out for memory, in slices of `config.slice_size` sequences: each slice's flows are one
        ODE (`flow(batch_axes=...)`), so the potentials' gradient is summed over sequences at each
        step, and the decoder loops over each slice's frames (its dense first layers on all of them,
        its spatial layers `rows` frames at a time) with its gradient taken inside those loops
        (`ConvDecoder.summed_log_likelihood`), so the backward pass keeps no decoder activations.
        """
        b, n = frames.shape[:2]
        keys = jr.split(key, b)
        mu, logvar, z0, logq0, probe_keys = jax.vmap(self._sample_z0)(frames[:, 0], keys)
        rows = slice_rows(b, self.config.slice_size)

        def solve(ks, z0, logq0, keys):
            return self._solve(self.flows.row_potentials(ks), z0, logq0, self.frame_times, keys, batch_axes=0)

        sliced = jax.tree.map(lambda a: a.reshape(b // rows, rows, *a.shape[1:]), (ks, z0, logq0, probe_keys))
        zs, logqs = jax.tree.map(lambda a: a.reshape(b, *a.shape[2:]), jax.lax.map(lambda a: solve(*a), sliced))
        terms = jax.vmap(self._latent_terms)(mu, logvar, zs, logqs, ks)
        by_slice = lambda a: a.reshape(b // rows, rows * n, *a.shape[2:])  # noqa: E731
        recon = self.decoder.summed_log_likelihood(by_slice(zs), by_slice(frames), frames_per_slice=rows)
        return self._with_reconstruction(recon / b, jax.tree.map(jnp.mean, terms))

    def flow_posterior_logits(self, x_seq: Float[Array, "n c h w"]) -> Float[Array, " k"]:
        """Logits of q(k | x̄) (weakly supervised models only)."""
        if self.sequence_encoder is None:
            raise ValueError("this model has no q(k|x̄); build it with FFVAEConfig(weakly_supervised=True)")
        return self.sequence_encoder(x_seq)

    def weak_loss(self, x_seq: Float[Array, "n c h w"], *, key: PRNGKeyArray) -> tuple[Scalar, dict[str, Scalar]]:
        """Weakly supervised loss: Σ_k q(k|x̄) loss_k + KL[q(k|x̄) ‖ U(K)] (exact sum over k).

        With `weak_estimator="gumbel"` one k is drawn by straight-through Gumbel-softmax instead, so
        only one flow is solved (for large K).
        """
        c = self.config
        logits = self.flow_posterior_logits(x_seq)
        kl_k = obj.kl_to_uniform(logits)
        if c.weak_estimator == "exact":
            losses, terms = jax.vmap(lambda k: self.loss(x_seq, k, key=key))(jnp.arange(c.num_flows))
            q = jax.nn.softmax(logits)
            weighted = {name: q @ value for name, value in terms.items()}
        else:
            gumbel_key, loss_key = jr.split(key)
            y_soft = jax.nn.softmax((logits + jr.gumbel(gumbel_key, logits.shape)) / c.gumbel_temperature)
            k = jnp.argmax(y_soft)
            gate = 1.0 + y_soft[k] - jax.lax.stop_gradient(y_soft[k])
            _, terms = self.loss(x_seq, k, key=loss_key)
            weighted = {name: gate * value for name, value in terms.items()}
        loss = weighted["loss"] + kl_k
        weighted.update(loss=loss, elbo=weighted["elbo"] - kl_k, kl_k=kl_k)
        return loss, weighted

