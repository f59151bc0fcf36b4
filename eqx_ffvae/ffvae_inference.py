"""The FFVAE where k is not observed: q(k | x̄) is part of the model (docs/method.md §4).

* `WeakFFVAE`: weak supervision (each sequence holds one transformation, which one is unknown): trained
  by variational EM with a balanced E-step, a lower bound on log p(x̄) (`weak_batch_loss`).
* `GroupFFVAE`: the authors' group-supervised variant (every sequence of a batch shares one k), for
  comparison; not a bound.

Both are `interfaces.AbstractFlowInferenceModel`s: evaluation scores them by the flow their q infers.
Their weights start where `FlowFactorizedVAE`'s do for the same key (`model.ffvae_parts`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from einops import rearrange
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from . import distributions as dist
from . import objectives as obj
from .interfaces import AbstractFlowInferenceModel, Terms
from .layout import Layout
from .model import AbstractFFVAE, FFVAEConfig, ffvae_parts
from .nn import AbstractDecoder, AbstractEncoder, ConvDecoder, ConvEncoder, SequenceEncoder
from .potentials import PotentialBank
from .prior import DiffusionPrior


class AbstractInferringFFVAE(AbstractFFVAE, AbstractFlowInferenceModel):
    """An FFVAE with a sequence encoder q(k | x̄)."""

    sequence_encoder: eqx.AbstractVar[eqx.Module]

    def flow_posterior_logits(self, x_seq: Float[Array, "n ..."]) -> Float[Array, " k"]:
        return self.sequence_encoder(x_seq)


def _check_config(config: FFVAEConfig, flag: str, cls: str) -> None:
    if not getattr(config, flag):
        raise ValueError(f"{cls} needs FFVAEConfig({flag}=True) (the config records what the model observes of k)")


class WeakFFVAE(AbstractInferringFFVAE):
    """Weakly supervised FFVAE: `batch_loss` is variational EM with a balanced E-step (`ks` ignored)."""

    encoder: AbstractEncoder
    decoder: AbstractDecoder
    flows: PotentialBank
    prior: DiffusionPrior
    sequence_encoder: eqx.Module
    config: FFVAEConfig = eqx.field(static=True)

    def __init__(
        self,
        config: FFVAEConfig,
        *,
        key: PRNGKeyArray,
        encoder: AbstractEncoder | None = None,
        decoder: AbstractDecoder | None = None,
        flows: PotentialBank | None = None,
        sequence_encoder: eqx.Module | None = None,
    ):
        """As `FlowFactorizedVAE`'s, and `sequence_encoder`: your own q(k | x̄), any module mapping a
        sequence (T+1, …) to K logits (default: `nn.SequenceEncoder` on images)."""
        _check_config(config, "weakly_supervised", "WeakFFVAE")
        parts = ffvae_parts(
            config, key=key, encoder=encoder, decoder=decoder, flows=flows, sequence_encoder=sequence_encoder
        )
        self.encoder, self.decoder, self.flows, self.prior, self.sequence_encoder = parts
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
        del ks, step
        return self.weak_batch_loss(frames, key=key, layout=layout)

    def weak_loss(self, x_seq: Float[Array, "n ..."], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
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

    def assignment_scores(self, frames: Float[Array, "b n *x"], *, key: PRNGKeyArray) -> Float[Array, "b k"]:
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
            rearrange(zs, "k b t d -> (k t) b d"), rearrange(targets, "k b t ... -> (k t) b ...")
        )
        recon = rearrange(recon, "(k t) b -> k b t", k=c.num_flows)
        scores = jnp.sum(recon, axis=2) - c.flow_kl_weight * kl_flow
        return jax.lax.stop_gradient(scores.T)

    def weak_batch_loss(
        self, frames: Float[Array, "b n *x"], *, key: PRNGKeyArray, layout: Layout | None = None
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

        The M-step is `supervised_batch_loss`, laid out by `layout` where the model has a laid-out form.
        """
        c = self.config
        loss_key, assign_key = jr.split(key)
        scores = self.assignment_scores(frames, key=loss_key)
        log_p = obj.balanced_assignment(scores, c.min_flow_share)
        ks = jr.categorical(assign_key, log_p)
        loss, terms = self.supervised_batch_loss(frames, ks, key=loss_key, layout=layout)
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


class GroupFFVAE(AbstractInferringFFVAE):
    """The authors' group-supervised FFVAE: `batch_loss` is their objective (`ks` ignored; needs `step`)."""

    encoder: ConvEncoder
    decoder: ConvDecoder
    flows: PotentialBank
    prior: DiffusionPrior
    sequence_encoder: SequenceEncoder
    config: FFVAEConfig = eqx.field(static=True)

    def __init__(self, config: FFVAEConfig, *, key: PRNGKeyArray):
        _check_config(config, "group_supervised", "GroupFFVAE")
        self.encoder, self.decoder, self.flows, self.prior, self.sequence_encoder = ffvae_parts(config, key=key)
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
        del ks, layout
        if step is None:
            raise ValueError(
                "the group-supervised objective needs the training step (its Gumbel temperature): pass step="
            )
        return self.group_batch_loss(frames, step, key=key)

    def weighted_loss(
        self, x_seq: Float[Array, "n ..."], weights: Float[Array, " k"], *, key: PRNGKeyArray
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

    def group_batch_loss(
        self, frames: Float[Array, "b n *x"], step: Int[ArrayLike, ""], *, key: PRNGKeyArray
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
