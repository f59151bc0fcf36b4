"""Sequences finished on the accelerator: the host ships compact batches, the training step makes
the float32 frames (docs/method.md §1).

* MNIST: one uint8 digit (28×28, 784 bytes) and k per sequence instead of T+1 float32 RGB frames
  (9 × 3 × 28 × 28 × 4 = 84,672 bytes). `mnist_frames` is the JAX twin of `transforms.mnist_frames`
  (the same sampling tables, the same kornia conventions), equal to it to float32 rounding.
* Factor datasets: uint8 frames, converted to [0, 1] on the device (bit-identical to the host's
  `astype(float32) / 255`), a quarter of the bytes.

`frames(batch, num_frames)` turns either compact batch, or an already-float one, into the frames the
models take. `sequence_dataset(..., compact=True)` makes the compact batches.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, UInt8

from .transforms import HUES_DEG, MNIST_FRAMES, ROTATIONS_DEG, SCALES, _affine_table


@functools.lru_cache(maxsize=8)
def _tables(num_frames: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per k: the bilinear sampling table of each frame (indices and weights (3, n, 4, H·W); the hue
    transformation k = 2 samples each pixel itself) and the hue shift of each frame in radians (3, n)."""
    n = num_frames
    scale = _affine_table(tuple(0.0 for _ in range(n)), tuple(float(s) for s in SCALES[:n]), h, w)
    rotation = _affine_table(tuple(float(a) for a in ROTATIONS_DEG[:n]), tuple(1.0 for _ in range(n)), h, w)
    same_idx = np.broadcast_to(np.arange(h * w), (n, 4, h * w))
    same_weight = np.zeros((n, 4, h * w), np.float32)
    same_weight[:, 0] = 1.0
    idx = np.stack([scale[0], rotation[0], same_idx])
    weight = np.stack([scale[1], rotation[1], same_weight])
    hue = np.zeros((3, n))
    hue[2] = np.deg2rad(HUES_DEG[:n])
    return idx, weight, hue


def _rgb_to_hsv(rgb: Float[Array, "3 h w"], eps: float = 1e-8) -> Float[Array, "3 h w"]:
    """`transforms.rgb_to_hsv` in JAX (kornia's convention, h in [0, 2π))."""
    maxc, minc = rgb.max(axis=0), rgb.min(axis=0)
    argmax = rgb.argmax(axis=0)
    delta = maxc - minc
    s = delta / (maxc + eps)
    safe = jnp.where(delta == 0, 1.0, delta)
    r, g, b = maxc[None] - rgb
    cand = jnp.stack([b - g, (r - b) + 2.0 * safe, (g - r) + 4.0 * safe]) / safe[None]
    hue = jnp.take_along_axis(cand, argmax[None], axis=0)[0]
    hue = jnp.mod(hue / 6.0, 1.0) * 2 * jnp.pi
    return jnp.stack([hue, s, maxc])


def _hsv_to_rgb(hsv: Float[Array, "3 h w"]) -> Float[Array, "3 h w"]:
    """`transforms.hsv_to_rgb` in JAX (kornia's six-sector table in closed form)."""
    h, s, v = hsv[0:1], hsv[1:2], hsv[2:3]
    k = jnp.array([5.0, 3.0, 1.0]).reshape(3, 1, 1) + h * (3 / jnp.pi)
    k = k - 6.0 * jnp.floor(k / 6.0)
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def _one_mnist_sequence(digit: UInt8[Array, "h w"], k: Int[Array, ""], num_frames: int) -> Float[Array, "n 3 h w"]:
    h, w = digit.shape
    idx, weight, hue = _tables(num_frames, h, w)
    grey = jnp.asarray(_BYTE_VALUES)[digit].reshape(h * w)
    red = jnp.einsum("fkp,fkp->fp", grey[jnp.asarray(idx)[k]], jnp.asarray(weight)[k]).reshape(num_frames, h, w)
    rgb = jnp.stack([red, jnp.zeros_like(red), jnp.zeros_like(red)], axis=1)

    def shifted(image, delta):
        hsv = _rgb_to_hsv(image)
        return _hsv_to_rgb(hsv.at[0].add(delta))

    hued = jax.vmap(shifted)(rgb, jnp.asarray(hue, jnp.float32)[k])
    return jnp.where(k == 2, hued, rgb)


def mnist_frames(
    digits: UInt8[Array, "b h w"], ks: Int[Array, " b"], num_frames: int = MNIST_FRAMES
) -> Float[Array, "b n 3 h w"]:
    """The coloured frames t = 0 … num_frames − 1 of transformation ks[i] applied to digits[i]: what
    `MnistSequence` builds on the host (`transforms.mnist_frames` of `colourise(digit / 255)`)."""
    if not 2 <= num_frames <= MNIST_FRAMES:
        raise ValueError(f"MNIST sequences have 2 … {MNIST_FRAMES} frames, got num_frames={num_frames}")
    return jax.vmap(functools.partial(_one_mnist_sequence, num_frames=num_frames))(digits, ks)


def frames(batch: dict[str, Array], num_frames: int) -> Float[Array, "b n c h w"]:
    """The float32 frames in [0, 1] of a batch: made from "digits" (compact MNIST), scaled from uint8
    "frames" (compact factor datasets), or "frames" as they are."""
    if "digits" in batch:
        return mnist_frames(batch["digits"], batch["k"], num_frames)
    x = batch["frames"]
    return jnp.asarray(_BYTE_VALUES)[x] if x.dtype == jnp.uint8 else x


_BYTE_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)
"""The host's `uint8 / 255` in float32, looked up: XLA may divide by multiplying with 1/255, one ulp off."""
