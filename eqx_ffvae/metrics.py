"""Held-out metrics shared by every model (docs/method.md §5). Each function scores one sequence; vmap them.

A model is scored through its declared interface (`interfaces.AbstractSequenceModel`): `encode`,
`decode`, and for the likelihood `importance_proposal`, `proposal_log_likelihood` and
`prior_log_prob`; an `AbstractTransportModel` is also scored along its own `transport`. Models with no
learned transformation are scored by the best linear shift.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from .flows import frame_times
from .interfaces import AbstractSequenceModel, AbstractSparseControlModel, AbstractTransportModel


def l1_error(model: AbstractSequenceModel, zs: Float[Array, "n d"], targets: Float[Array, "n c h w"]) -> Scalar:
    """Σ_t ‖sigmoid(dec(z_t)) − x_t‖_1 over the given frames (pixels and channels summed)."""
    means = jax.vmap(lambda z: jax.nn.sigmoid(model.decode(z)))(zs)
    return jnp.sum(jnp.abs(means - targets))


CHANGED_PIXEL_THRESHOLD = 0.1
"""A pixel of frame t has changed when some channel differs from frame 0's by more than this (in [0, 1])."""

Pixels = Literal["all", "changed"]


def changed_pixels(x_seq: Float[Array, "n c h w"]) -> Float[Array, "n c h w"]:
    """1 where a pixel of frame t differs from frame 0's by more than `CHANGED_PIXEL_THRESHOLD` in some
    channel (the mask repeated over channels), else 0; frame 0 is all 0."""
    moved = jnp.max(jnp.abs(x_seq - x_seq[:1]), axis=1, keepdims=True) > CHANGED_PIXEL_THRESHOLD
    return jnp.broadcast_to(moved, x_seq.shape).astype(x_seq.dtype)


def _l1_after_first(
    model: AbstractSequenceModel, zs: Float[Array, "n d"], x_seq: Float[Array, "n c h w"], pixels: Pixels = "all"
) -> Scalar:
    """Σ_{t≥1} ‖sigmoid(dec(z_t)) − x_t‖_1 (pixels and channels summed); with `pixels="changed"`, over
    the pixels that changed between x_0 and x_t only (`changed_pixels`)."""
    if pixels == "all":
        return l1_error(model, zs[1:], x_seq[1:])
    if pixels != "changed":
        raise ValueError(f"pixels must be 'all' or 'changed', got {pixels!r}")
    means = jax.vmap(lambda z: jax.nn.sigmoid(model.decode(z)))(zs[1:])
    return jnp.sum(jnp.abs(means - x_seq[1:]) * changed_pixels(x_seq)[1:])


def equivariance_error(
    model: AbstractTransportModel,
    x_seq: Float[Array, "n c h w"],
    k: Int[ArrayLike, ""],
    *,
    key: PRNGKeyArray | None = None,
    pixels: Pixels = "all",
) -> Scalar:
    """E_k of one sequence: start at μ(x_0), follow the model's own flow k, compare frames 1…T (over
    every pixel, or with `pixels="changed"` over those that changed from x_0)."""
    mu, _ = model.encode(x_seq[0])
    zs = model.transport(k, mu, frame_times(x_seq.shape[0]), key=key)
    return _l1_after_first(model, zs, x_seq, pixels)


def equivariance_error_identity(
    model: AbstractSequenceModel, x_seq: Float[Array, "n c h w"], *, pixels: Pixels = "all"
) -> Scalar:
    """The same error when the latent does not move (z_t = μ(x_0)): the floor a flow must beat."""
    mu, _ = model.encode(x_seq[0])
    return _l1_after_first(model, jnp.broadcast_to(mu, (x_seq.shape[0], mu.shape[0])), x_seq, pixels)


def equivariance_error_controlled(
    model: AbstractSparseControlModel, x_seq: Float[Array, "n c h w"], *, pixels: Pixels = "all"
) -> Scalar:
    """E of one sequence for a sparse-control model: start at μ(x_0), follow the controls the model reads
    off the sequence (`controls`), compare frames 1…T."""
    mu, _ = model.encode(x_seq[0])
    return _l1_after_first(model, model.controlled_path(mu, model.controls(x_seq)), x_seq, pixels)


def extrapolation_path(
    model: AbstractTransportModel, x0: Float[Array, "c h w"], k: Int[ArrayLike, ""], horizon: int
) -> Float[Array, "m d"]:
    """The model's own flow k from μ(x_0) at t = T+1 … 2T (T = horizon): past the trained frames."""
    mu, _ = model.encode(x0)
    return model.transport(k, mu, frame_times(2 * horizon + 1))[horizon + 1 :]


def continued_shifts(shifts: Float[Array, "k n d"], horizon: int) -> Float[Array, "k m d"]:
    """The linear shift at t = T+1 … 2T, continued at its last fitted step: Δ_T + (t − T)(Δ_T − Δ_{T−1})
    (fitted on the trained horizon only, as the flows were trained)."""
    steps = jnp.arange(1, horizon + 1, dtype=shifts.dtype)
    velocity = shifts[:, -1] - shifts[:, -2]
    return shifts[:, -1:] + steps[None, :, None] * velocity[:, None]


def composition_path(
    model: AbstractTransportModel, x0: Float[Array, "c h w"], weights: Float[Array, " k"], num_frames: int
) -> Float[Array, "n d"]:
    """The model's flows applied together (`compose` with these weights) from μ(x_0), frames 0…T."""
    mu, _ = model.encode(x0)
    return model.compose(weights, mu, frame_times(num_frames))


def linear_shift_sums(
    model: AbstractSequenceModel, x_seqs: Float[Array, "b n c h w"], ks: Int[Array, " b"], num_flows: int
) -> tuple[Float[Array, "k n d"], Float[Array, " k"]]:
    """Per-k sums of μ(x_t) − μ(x_0) over a batch, and the per-k counts; add up over batches."""
    mus = jax.vmap(jax.vmap(lambda x: model.encode(x)[0]))(x_seqs)
    shifts = mus - mus[:, :1]
    onehot = jax.nn.one_hot(ks, num_flows, dtype=shifts.dtype)
    return jnp.einsum("bk,bnd->knd", onehot, shifts), onehot.sum(0)


def linear_shifts(sums: Float[Array, "k n d"], counts: Float[Array, " k"]) -> Float[Array, "k n d"]:
    """Δ_{k,t} = mean over training sequences of μ(x_t) − μ(x_0) (docs/method.md §5's best linear shift)."""
    if bool(jnp.any(counts == 0)):
        missing = [int(i) for i in jnp.flatnonzero(counts == 0)]
        raise ValueError(f"no training sequences of transformation(s) {missing}: cannot fit their linear shift")
    return sums / counts[:, None, None]


def equivariance_error_linear(
    model: AbstractSequenceModel,
    x_seq: Float[Array, "n c h w"],
    k: Int[ArrayLike, ""],
    shifts: Float[Array, "k n d"],
    *,
    pixels: Pixels = "all",
) -> Scalar:
    """E_k with z_t = μ(x_0) + Δ_{k,t}: latent arithmetic, the transformation any VAE admits."""
    mu, _ = model.encode(x_seq[0])
    return _l1_after_first(model, mu[None] + shifts[k], x_seq, pixels)


def importance_estimate(log_w: Float[Array, "s n"]) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """log (1/S) Σ_s w_s and the effective sample size (Σ w)² / Σ w² (1 … S) of each column."""
    lse = jax.nn.logsumexp(log_w, axis=0)
    return lse - jnp.log(log_w.shape[0]), jnp.exp(2 * lse - jax.nn.logsumexp(2 * log_w, axis=0))


LIKELIHOOD_CHUNK = 100
"""Importance samples drawn and decoded at once; larger S is drawn in chunks of (about) this many."""


def log_likelihood(
    model: AbstractSequenceModel,
    x_seq: Float[Array, "n c h w"],
    k: Int[ArrayLike, ""],
    *,
    key: PRNGKeyArray,
    num_samples: int = 100,
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """Importance-sampled log p(x_t) of every frame (nats per image) and its effective sample size.

    The mixture proposal of docs/method.md §5, drawn in fixed numbers: ⌈S/2⌉ draws of the model's own
    proposal for frame t (`importance_proposal`) and ⌊S/2⌋ of its image encoder on x_t alone
    (`frame_proposal`), each draw weighted by the density of the component it came from:
    log (1/S) Σ_s p(x_t | z^s) p_t(z^s) / q_{c(s)}(z^s). Each component's weights average to p(x_t), so
    the estimate is unbiased, and it never falls more than log(S/⌊S/2⌋) below the encoder's estimate
    alone. No density is evaluated at the other component's draws: a flow model's own density there
    needs the map inverted, which fails where the map folds (I + h∇²u not positive definite).
    A draw where the prior's density is 0 in float32 (or that overflowed) gets weight 0.
    S = 1 is the single draw of the model's own proposal: log p(x|z) + log p(z) − log q(z), the
    proposal's ELBO-type bound.

    S > `LIKELIHOOD_CHUNK` is drawn as c = ⌈S / LIKELIHOOD_CHUNK⌉ chunks of ⌈S / c⌉ draws, each chunk
    split between the components as above (one key per chunk; `jax.lax.map`, so memory stays that of
    one chunk), and the first S draws are kept: every draw's weight is unbiased on its own, so the
    estimate stays unbiased with the components' shares within one draw per chunk of ½.
    """
    if num_samples <= LIKELIHOOD_CHUNK:
        return importance_estimate(_log_weights(model, x_seq, k, key, num_samples))
    chunks = -(-num_samples // LIKELIHOOD_CHUNK)
    size = -(-num_samples // chunks)
    log_w = jax.lax.map(lambda kk: _log_weights(model, x_seq, k, kk, size), jr.split(key, chunks))
    return importance_estimate(log_w.reshape(chunks * size, -1)[:num_samples])


def _log_weights(
    model: AbstractSequenceModel,
    x_seq: Float[Array, "n c h w"],
    k: Int[ArrayLike, ""],
    key: PRNGKeyArray,
    num_samples: int,
) -> Float[Array, "s n"]:
    """`log_likelihood`'s log-weights of `num_samples` mixture draws per frame. A sparse-control model
    (STA) draws all of them from its own proposal: the encoder half's weight needs the prior's density
    of z_t alone, which such a model does not have in closed form (docs/method.md §8)."""
    num_frame = 0 if isinstance(model, AbstractSparseControlModel) else num_samples // 2
    num_own = num_samples - num_frame
    own_key, frame_key = jr.split(key)
    zs, logq = jax.vmap(lambda kk: model.importance_proposal(x_seq, k, key=kk))(jr.split(own_key, num_own))
    if num_frame:
        keys = jr.split(frame_key, (num_frame, x_seq.shape[0]))
        zf, logq_f = jax.vmap(jax.vmap(lambda x, kk: model.frame_proposal(x, key=kk)))(
            jnp.broadcast_to(x_seq, (num_frame, *x_seq.shape)), keys
        )
        zs, logq = jnp.concatenate([zs, zf]), jnp.concatenate([logq, logq_f])
    ts = frame_times(x_seq.shape[0])
    loglik = jax.vmap(jax.vmap(model.proposal_log_likelihood), (0, None))(zs, x_seq)
    logp = jax.vmap(jax.vmap(model.prior_log_prob, in_axes=(None, 0, 0)), in_axes=(None, None, 0))(k, ts, zs)
    # A draw far out (an encoder σ of 1e18 and more, seen on frames unlike its training data) has prior
    # density 0 in float32, so weight 0, whatever its decoder gives there (inf − inf in the logits).
    nowhere = (logp == -jnp.inf) | ~jnp.all(jnp.isfinite(zs), axis=-1)
    return jnp.where(nowhere, -jnp.inf, loglik + logp - logq)


def marginal_log_likelihood(
    model: AbstractTransportModel, x_seq: Float[Array, "n c h w"], *, key: PRNGKeyArray, num_samples: int = 100
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """log p(x_t) = log Σ_k p(k) p^k(x_t) of every frame, for a model that does not observe k (docs/method.md §5),
    and the smallest effective sample size of the K estimates.

    Each p^k(x_t) is `log_likelihood` along flow k, all with the same key (the same draws for every
    flow, so relabelling the flows relabels the terms and leaves the sum unchanged); p(k) is uniform.
    """
    num_flows = model.num_flows
    per_flow, ess = jax.vmap(lambda k: log_likelihood(model, x_seq, k, key=key, num_samples=num_samples))(
        jnp.arange(num_flows)
    )
    return jax.nn.logsumexp(per_flow, axis=0) - jnp.log(num_flows), jnp.min(ess, axis=0)
