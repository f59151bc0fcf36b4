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
    """Per k ∈ {scale, rotation}: the bilinear sampling table of each frame (indices and weights
    (2, n, 4, H·W)); and per k, frame and channel the hue factor m (3, n, 3) below (zero but for hue)."""
    n = num_frames
    scale = _affine_table(tuple(0.0 for _ in range(n)), tuple(float(s) for s in SCALES[:n]), h, w)
    rotation = _affine_table(tuple(float(a) for a in ROTATIONS_DEG[:n]), tuple(1.0 for _ in range(n)), h, w)
    idx = np.stack([scale[0], rotation[0]])
    weight = np.stack([scale[1], rotation[1]])
    # kornia's HSV → RGB of (h = δ, s, v): channel c is v − v·s·m_c, m_c = clip(min(k, 4 − k), 0, 1) with
    # k = (n_c + 3δ/π) mod 6, n = (5, 3, 1) (`transforms.hsv_to_rgb`). A red-only pixel (v, 0, 0) has
    # h = 0, so its hue-shifted colour needs only m_c(δ) of each frame.
    delta = np.deg2rad(HUES_DEG[:n])[:, None]
    k = np.mod(np.array([5.0, 3.0, 1.0])[None] + delta * (3 / np.pi), 6.0)
    hue = np.zeros((3, n, 3), np.float32)
    hue[2] = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return idx, weight, hue


def _one_mnist_sequence(digit: UInt8[Array, "h w"], k: Int[Array, ""], num_frames: int) -> Float[Array, "n 3 h w"]:
    h, w = digit.shape
    idx, weight, hue = _tables(num_frames, h, w)
    grey = jnp.asarray(_BYTE_VALUES)[digit].reshape(h * w)
    geometric = k < 2
    kk = jnp.minimum(k, 1)
    warped = jnp.einsum("fkp,fkp->fp", grey[jnp.asarray(idx)[kk]], jnp.asarray(weight)[kk])
    red = jnp.where(geometric, warped, grey[None]).reshape(num_frames, 1, h, w)
    # the hue transformation of a red-only image: s = v / (v + 1e-8) as in `rgb_to_hsv`
    m = jnp.asarray(hue)[k].reshape(num_frames, 3, 1, 1)
    hued = red - red * (red / (red + 1e-8)) * m
    zeros = jnp.zeros_like(red)
    return jnp.where(geometric, jnp.concatenate([red, zeros, zeros], axis=1), hued)


def mnist_frames(
    digits: UInt8[Array, "b h w"], ks: Int[Array, " b"], num_frames: int = MNIST_FRAMES
) -> Float[Array, "b n 3 h w"]:
    """The coloured frames t = 0 … num_frames − 1 of transformation ks[i] applied to digits[i]: what
    `MnistSequence` builds on the host (`transforms.mnist_frames` of `colourise(digit / 255)`)."""
    if not 2 <= num_frames <= MNIST_FRAMES:
        raise ValueError(f"MNIST sequences have 2 … {MNIST_FRAMES} frames, got num_frames={num_frames}")
    return jax.vmap(functools.partial(_one_mnist_sequence, num_frames=num_frames))(digits, ks)


def _one_composed_sequence(digit: UInt8[Array, "h w"], values: Float[Array, "n 3"]) -> Float[Array, "n 3 h w"]:
    h, w = digit.shape
    grey = jnp.asarray(_BYTE_VALUES)[digit].reshape(h * w)
    scale, theta, hue = values[:, 0, None, None], jnp.deg2rad(values[:, 1])[:, None, None], values[:, 2]
    # `transforms._affine_table` in float32: each output pixel samples the source at the inverse image
    # of its centre under s R(θ) about (W/2, H/2), bilinearly, zero outside
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    dx, dy = xs[None] - w / 2.0, ys[None] - h / 2.0
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    sx, sy = (cos * dx - sin * dy) / scale + w / 2.0, (sin * dx + cos * dy) / scale + h / 2.0
    x0, y0 = jnp.floor(sx), jnp.floor(sy)
    wx, wy = sx - x0, sy - y0
    red = jnp.zeros(sx.shape, jnp.float32)
    for oy, ox, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        xi, yi = (x0 + ox).astype(jnp.int32), (y0 + oy).astype(jnp.int32)
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        red = red + jnp.where(valid, weight * grey[jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)], 0.0)
    red = red[:, None]
    # the hue rotation of a red-only pixel, as `_tables`' factor m_c(δ)
    k = jnp.mod(jnp.array([5.0, 3.0, 1.0])[None] + jnp.deg2rad(hue)[:, None] * (3 / jnp.pi), 6.0)
    m = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)[:, :, None, None]
    return red - red * (red / (red + 1e-8)) * m


def mnist_composed_frames(digits: UInt8[Array, "b h w"], values: Float[Array, "b n 3"]) -> Float[Array, "b n 3 h w"]:
    """The coloured frames of digits[i] with frame t at scale values[i, t, 0], rotation values[i, t, 1]°
    and hue values[i, t, 2]° together: what `compositions.MnistComposition` builds on the host
    (`transforms.mnist_transform`: the warp first, then the hue)."""
    return jax.vmap(_one_composed_sequence)(digits, values)


def frames(batch: dict[str, Array], num_frames: int) -> Float[Array, "b n c h w"]:
    """The float32 frames in [0, 1] of a batch: made from "digits" (compact MNIST; with "values", the
    composed transformations of `mnist-single`/`mnist-double`), scaled from uint8 "frames" (compact
    factor datasets), or "frames" as they are."""
    if "values" in batch:
        return mnist_composed_frames(batch["digits"], batch["values"][:, :num_frames])
    if "digits" in batch:
        return mnist_frames(batch["digits"], batch["k"], num_frames)
    x = batch["frames"]
    return jnp.asarray(_BYTE_VALUES)[x] if x.dtype == jnp.uint8 else x


_BYTE_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)
"""The host's `uint8 / 255` in float32, looked up: XLA may divide by multiplying with 1/255, one ulp off."""
