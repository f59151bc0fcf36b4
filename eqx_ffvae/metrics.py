"""Held-out metrics shared by every model (SPEC §5). Each function scores one sequence; vmap them.

A model is scored through its declared interface (`interfaces.AbstractSequenceModel`): `encode`,
`decode`, and for the likelihood `importance_proposal`, `proposal_log_likelihood` and
`prior_log_prob`; an `AbstractTransportModel` is also scored along its own `transport`. Models with no
learned transformation are scored by the best linear shift.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from .flows import frame_times
from .interfaces import AbstractSequenceModel, AbstractTransportModel


def _l1_after_first(model: AbstractSequenceModel, zs: Float[Array, "n d"], x_seq: Float[Array, "n c h w"]) -> Scalar:
    """Σ_{t≥1} ‖sigmoid(dec(z_t)) − x_t‖_1 (pixels and channels summed)."""
    means = jax.vmap(lambda z: jax.nn.sigmoid(model.decode(z)))(zs[1:])
    return jnp.sum(jnp.abs(means - x_seq[1:]))


def equivariance_error(
    model: AbstractTransportModel, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray | None = None
) -> Scalar:
    """E_k of one sequence: start at μ(x_0), follow the model's own flow k, compare frames 1…T."""
    mu, _ = model.encode(x_seq[0])
    zs = model.transport(k, mu, frame_times(x_seq.shape[0]), key=key)
    return _l1_after_first(model, zs, x_seq)


def equivariance_error_identity(model: AbstractSequenceModel, x_seq: Float[Array, "n c h w"]) -> Scalar:
    """The same error when the latent does not move (z_t = μ(x_0)): the floor a flow must beat."""
    mu, _ = model.encode(x_seq[0])
    return _l1_after_first(model, jnp.broadcast_to(mu, (x_seq.shape[0], mu.shape[0])), x_seq)


def linear_shift_sums(
    model: AbstractSequenceModel, x_seqs: Float[Array, "b n c h w"], ks: Int[Array, " b"], num_flows: int
) -> tuple[Float[Array, "k n d"], Float[Array, " k"]]:
    """Per-k sums of μ(x_t) − μ(x_0) over a batch, and the per-k counts; add up over batches."""
    mus = jax.vmap(jax.vmap(lambda x: model.encode(x)[0]))(x_seqs)
    shifts = mus - mus[:, :1]
    onehot = jax.nn.one_hot(ks, num_flows, dtype=shifts.dtype)
    return jnp.einsum("bk,bnd->knd", onehot, shifts), onehot.sum(0)


def linear_shifts(sums: Float[Array, "k n d"], counts: Float[Array, " k"]) -> Float[Array, "k n d"]:
    """Δ_{k,t} = mean over training sequences of μ(x_t) − μ(x_0) (SPEC §5's best linear shift)."""
    if bool(jnp.any(counts == 0)):
        missing = [int(i) for i in jnp.flatnonzero(counts == 0)]
        raise ValueError(f"no training sequences of transformation(s) {missing}: cannot fit their linear shift")
    return sums / counts[:, None, None]


def equivariance_error_linear(
    model: AbstractSequenceModel, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], shifts: Float[Array, "k n d"]
) -> Scalar:
    """E_k with z_t = μ(x_0) + Δ_{k,t}: latent arithmetic, the transformation any VAE admits."""
    mu, _ = model.encode(x_seq[0])
    return _l1_after_first(model, mu[None] + shifts[k], x_seq)


def log_likelihood(
    model: AbstractSequenceModel,
    x_seq: Float[Array, "n c h w"],
    k: Int[ArrayLike, ""],
    *,
    key: PRNGKeyArray,
    num_samples: int = 100,
) -> Float[Array, " n"]:
    """Importance-sampled log p(x_t) of every frame (nats per image):

    log (1/S) Σ_s p(x_t | z_t^s) p_t(z_t^s) / q_t(z_t^s), with the model's own proposal and prior.
    """
    zs, logqs = jax.vmap(lambda key: model.importance_proposal(x_seq, k, key=key))(jr.split(key, num_samples))
    ts = frame_times(x_seq.shape[0])
    loglik = jax.vmap(jax.vmap(model.proposal_log_likelihood), (0, None))(zs, x_seq)
    logp = jax.vmap(jax.vmap(model.prior_log_prob, in_axes=(None, 0, 0)), in_axes=(None, None, 0))(k, ts, zs)
    log_w = loglik + logp - logqs
    return jax.nn.logsumexp(log_w, axis=0) - jnp.log(num_samples)


def marginal_log_likelihood(
    model: AbstractTransportModel, x_seq: Float[Array, "n c h w"], *, key: PRNGKeyArray, num_samples: int = 100
) -> Float[Array, " n"]:
    """log p(x_t) = log Σ_k p(k) p^k(x_t) of every frame, for a model that does not observe k (SPEC §5).

    Each p^k(x_t) is `log_likelihood` along flow k, all with the same key (the same draws for every
    flow, so relabelling the flows relabels the terms and leaves the sum unchanged); p(k) is uniform.
    """
    num_flows = model.num_flows
    per_flow = jax.vmap(lambda k: log_likelihood(model, x_seq, k, key=key, num_samples=num_samples))(
        jnp.arange(num_flows)
    )
    return jax.nn.logsumexp(per_flow, axis=0) - jnp.log(num_flows)
