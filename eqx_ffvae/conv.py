"""2-D convolutions written as patch extraction + one matmul, with `lax` as the reference.

XLA:CPU runs its native (and above all its transposed and gradient) convolutions far below its
matmul rate; the same maths as `im2col` + `einsum` runs several times faster here (see
`benchmarks/step.py`). Both layers take one example `(C, H, W)`; `impl="lax"` computes the same
function with `lax.conv_general_dilated` and is what the tests compare against.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

ConvImpl = Literal["matmul", "lax"]


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def im2col(
    x: Float[Array, "c h w"], kernel: int, stride: int, padding: int
) -> Float[Array, "c kh kw ho wo"]:
    """Every kernel-sized patch of `x` (zero padded), as `(C, k, k, H_out, W_out)`."""
    c, h, w = x.shape
    ho, wo = _out_size(h, kernel, stride, padding), _out_size(w, kernel, stride, padding)
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    rows = [
        jnp.stack(
            [
                xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
                for j in range(kernel)
            ],
            axis=1,
        )
        for i in range(kernel)
    ]
    return jnp.stack(rows, axis=1)


def col2im(
    cols: Float[Array, "c kh kw hi wi"], out_hw: tuple[int, int], stride: int, padding: int
) -> Float[Array, "c ho wo"]:
    """The exact adjoint of `im2col`: scatter-add each patch back to the image it came from."""
    c, kernel = cols.shape[0], cols.shape[1]
    like = jax.ShapeDtypeStruct((c, *out_hw), cols.dtype)
    (x,) = jax.linear_transpose(lambda img: im2col(img, kernel, stride, padding), like)(cols)
    return x


def _uniform(key: PRNGKeyArray, shape: tuple[int, ...], fan_in: float | int) -> Array:
    bound = 1.0 / math.sqrt(fan_in)
    return jr.uniform(key, shape, jnp.float32, -bound, bound)


class Conv2d(eqx.Module):
    """`y = W * x + b` (cross-correlation, zero padding), weight `(out, in, k, k)`."""

    weight: Float[Array, "o i k k"]
    bias: Float[Array, " o"]
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    impl: ConvImpl = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        *,
        impl: ConvImpl = "matmul",
        key: PRNGKeyArray,
    ):
        wkey, bkey = jr.split(key)
        fan_in = in_channels * kernel * kernel
        self.weight = _uniform(wkey, (out_channels, in_channels, kernel, kernel), fan_in)
        self.bias = _uniform(bkey, (out_channels,), fan_in)
        self.stride, self.padding, self.impl = stride, padding, impl

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "o ho wo"]:
        kernel = self.weight.shape[-1]
        if self.impl == "lax":
            y = jax.lax.conv_general_dilated(
                x[None],
                self.weight,
                (self.stride, self.stride),
                [(self.padding, self.padding)] * 2,
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
            )[0]
        else:
            cols = im2col(x, kernel, self.stride, self.padding)
            y = jnp.einsum("oikl,iklhw->ohw", self.weight, cols)
        return y + self.bias[:, None, None]


class ConvTranspose2d(eqx.Module):
    """The adjoint of a `Conv2d` (PyTorch's `ConvTranspose2d` with output_padding 0).

    Weight `(in, out, k, k)`; output size `(H - 1) * stride - 2 * padding + k`.
    """

    weight: Float[Array, "i o k k"]
    bias: Float[Array, " o"]
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    impl: ConvImpl = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        *,
        impl: ConvImpl = "matmul",
        key: PRNGKeyArray,
    ):
        wkey, bkey = jr.split(key)
        fan_in = in_channels * kernel * kernel / (stride * stride)
        self.weight = _uniform(wkey, (in_channels, out_channels, kernel, kernel), fan_in)
        self.bias = _uniform(bkey, (out_channels,), fan_in)
        self.stride, self.padding, self.impl = stride, padding, impl

    def out_size(self, size: int) -> int:
        return (size - 1) * self.stride - 2 * self.padding + self.weight.shape[-1]

    def __call__(self, x: Float[Array, "i h w"]) -> Float[Array, "o ho wo"]:
        out_hw = (self.out_size(x.shape[1]), self.out_size(x.shape[2]))
        if self.impl == "lax":
            like = jax.ShapeDtypeStruct((self.weight.shape[1], *out_hw), x.dtype)
            conv = lambda y: jax.lax.conv_general_dilated(  # noqa: E731
                y[None],
                self.weight,
                (self.stride, self.stride),
                [(self.padding, self.padding)] * 2,
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
            )[0]
            (y,) = jax.linear_transpose(conv, like)(x)
        else:
            cols = jnp.einsum("iokl,ihw->oklhw", self.weight, x)
            y = col2im(cols, out_hw, self.stride, self.padding)
        return y + self.bias[:, None, None]
