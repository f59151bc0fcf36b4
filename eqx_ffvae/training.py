"""The optimiser and one jitted training step: loss, gradients and the optax update together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

Batch = dict[str, Array]


def make_optimizer(learning_rate: float, *, clip_norm: float | None = 100.0) -> optax.GradientTransformation:
    """Adam (the paper's optimiser), with global-norm clipping as a guard against rare spikes."""
    adam = optax.adam(learning_rate)
    return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)


def batch_loss(
    model: Any, batch: Batch, key: PRNGKeyArray, *, weak: bool = False
) -> tuple[Scalar, dict[str, Scalar]]:
    """Mean per-sequence loss over a batch `{"frames": (B, T+1, C, H, W), "k": (B,)}`, one key each."""
    frames: Float[Array, "b n c h w"] = batch["frames"]
    keys = jr.split(key, frames.shape[0])
    if weak:
        losses, terms = jax.vmap(lambda x, kk: model.weak_loss(x, key=kk))(frames, keys)
    else:
        ks: Int[Array, " b"] = batch["k"]
        losses, terms = jax.vmap(lambda x, k, kk: model.loss(x, k, key=kk))(frames, ks, keys)
    return jnp.mean(losses), jax.tree.map(jnp.mean, terms)


def make_step(optimizer: optax.GradientTransformation, *, weak: bool = False) -> Callable:
    """`step(model, opt_state, batch, key) -> (model, opt_state, loss, terms)`, one JIT region."""

    @eqx.filter_jit(donate="all")
    def step(model, opt_state, batch, key):
        (loss, terms), grads = eqx.filter_value_and_grad(batch_loss, has_aux=True)(model, batch, key, weak=weak)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss, terms

    return step
