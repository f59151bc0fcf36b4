"""A tiny model learns two translations of a blob: its flows beat standing still by 2×."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_ffvae as ff
from eqx_ffvae import metrics
from eqx_ffvae.training import make_optimizer, make_step

SIZE, FRAMES, SHIFT = 28, 4, 3.0


def blob_sequences(key, n):
    """A Gaussian blob moving right (k = 0) or down (k = 1) by SHIFT pixels a frame."""
    start_key, k_key = jr.split(key)
    starts = jr.uniform(start_key, (n, 2), minval=6.0, maxval=SIZE - 6.0 - SHIFT * (FRAMES - 1))
    ks = jr.randint(k_key, (n,), 0, 2)
    steps = jnp.arange(FRAMES, dtype=jnp.float32)[None, :, None] * SHIFT * jax.nn.one_hot(ks, 2)[:, None, :]
    centres = starts[:, None, :] + steps
    grid = jnp.arange(SIZE, dtype=jnp.float32)
    dx = grid[None, None, None, :] - centres[..., 0, None, None]
    dy = grid[None, None, :, None] - centres[..., 1, None, None]
    img = jnp.exp(-(dx**2 + dy**2) / (2 * 2.0**2))
    return img[:, :, None], ks


@pytest.mark.slow
def test_flows_learn_blob_translations():
    config = ff.FFVAEConfig(
        image_shape=(1, SIZE, SIZE),
        num_frames=FRAMES,
        latent_dim=8,
        num_flows=2,
        width=8,
        potential_width=32,
        hj_weight=0.1,
        flow_kl_weight=0.1,
    )
    model_key, data_key, train_key, test_key = jr.split(jr.key(0), 4)
    model = ff.FlowFactorizedVAE(config, key=model_key)
    optimizer = make_optimizer(3e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    step = make_step(optimizer)
    for i in range(400):
        frames, ks = blob_sequences(jr.fold_in(data_key, i), 32)
        model, opt_state, loss, _ = step(model, opt_state, {"frames": frames, "k": ks}, jr.fold_in(train_key, i))
    assert jnp.isfinite(loss)
    frames, ks = blob_sequences(test_key, 64)
    errs = jax.jit(jax.vmap(lambda x, k: metrics.equivariance_error(model, x, k)))(frames, ks)
    ident = jax.jit(jax.vmap(lambda x: metrics.equivariance_error_identity(model, x)))(frames)
    ratio = float(jnp.mean(errs) / jnp.mean(ident))
    print(f"equivariance error / identity = {ratio:.3f}")
    assert ratio < 0.5
    np.testing.assert_array_less(0, ident)
