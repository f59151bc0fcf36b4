"""2-D convolutions on channels-last images `(H, W, C)`, each in the form XLA:CPU runs fastest.

Measured here (`benchmarks/step.py`): XLA's transposed convolutions and their gradients run far
below its matmul rate, and building patch matrices (im2col) is memory-bound and slower still. So:
a kernel that covers the whole input (or a transposed conv of a 1×1 input) is a dense matmul,
1×1 kernels are a matmul over pixels, other convs are XLA's forward convolution, and the
stride-2, k=4, p=1 transposed conv is computed sub-pixel: each of its four output phases is a
stride-1 2×2 forward convolution (no multiplications by inserted zeros), interleaved by a reshape. `impl="lax"` computes the
same functions with `lax.conv_general_dilated` and its exact transpose; the tests compare the two.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

ConvImpl = Literal["fast", "lax"]
_DIMS = ("NHWC", "OIHW", "NHWC")


def _uniform(key: PRNGKeyArray, shape: tuple[int, ...], fan_in: float | int) -> Array:
    bound = 1.0 / math.sqrt(fan_in)
    return jr.uniform(key, shape, jnp.float32, -bound, bound)


def _lax_conv(x: Array, weight: Array, stride: int, padding: int) -> Array:
    return jax.lax.conv_general_dilated(
        x[None], weight, (stride, stride), [(padding, padding)] * 2, dimension_numbers=_DIMS
    )[0]


class Conv2d(eqx.Module):
    """`y = W ⋆ x + b` (cross-correlation, zero padding) on `(H, W, C_in)`; weight `(out, in, k, k)`."""

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
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        wkey, bkey = jr.split(key)
        fan_in = in_channels * kernel * kernel
        self.weight = _uniform(wkey, (out_channels, in_channels, kernel, kernel), fan_in)
        self.bias = _uniform(bkey, (out_channels,), fan_in)
        self.stride, self.padding, self.impl = stride, padding, impl

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "ho wo o"]:
        k = self.weight.shape[-1]
        h, w, _ = x.shape
        if self.impl == "fast" and k == 1 and self.stride == 1 and self.padding == 0:
            y = x @ self.weight[:, :, 0, 0].T
        elif self.impl == "fast" and k == h == w and self.padding == 0:
            y = jnp.einsum("hwi,oihw->o", x, self.weight)[None, None]
        else:
            y = _lax_conv(x, self.weight, self.stride, self.padding)
        return y + self.bias[None, None]


# Sub-pixel form of the stride-2, k=4, p=1 transposed conv: output row 2a + r is a stride-1 2-tap
# correlation of the input rows (a - 1, a) for r = 0 or (a, a + 1) for r = 1, with kernel rows
# _PHASE_TAPS[r] and zero padding _PHASE_PAD[r]; likewise for columns.
_PHASE_TAPS = (np.array([3, 1]), np.array([2, 0]))
_PHASE_PAD = ((1, 0), (0, 1))


class ConvTranspose2d(eqx.Module):
    """The adjoint of a `Conv2d` (PyTorch's `ConvTranspose2d`, output_padding 0), on `(H, W, C_in)`.

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
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        wkey, bkey = jr.split(key)
        fan_in = in_channels * kernel * kernel / (stride * stride)
        self.weight = _uniform(wkey, (in_channels, out_channels, kernel, kernel), fan_in)
        self.bias = _uniform(bkey, (out_channels,), fan_in)
        self.stride, self.padding, self.impl = stride, padding, impl

    def out_size(self, size: int) -> int:
        return (size - 1) * self.stride - 2 * self.padding + self.weight.shape[-1]

    def __call__(self, x: Float[Array, "h w i"]) -> Float[Array, "ho wo o"]:
        i, o, k, _ = self.weight.shape
        h, w, _ = x.shape
        if self.impl == "lax":
            like = jax.ShapeDtypeStruct((self.out_size(h), self.out_size(w), o), x.dtype)
            (y,) = jax.linear_transpose(lambda y: _lax_conv(y, self.weight, self.stride, self.padding), like)(x)
        elif h == w == 1 and self.stride == 1 and self.padding == 0:
            y = jnp.einsum("i,iokl->klo", x[0, 0], self.weight)
        elif k == 1 and self.stride == 1 and self.padding == 0:
            y = x @ self.weight[:, :, 0, 0]
        elif (k, self.stride, self.padding) == (4, 2, 1):
            phases = [
                [
                    jax.lax.conv_general_dilated(
                        x[None],
                        self.weight[:, :, _PHASE_TAPS[r]][:, :, :, _PHASE_TAPS[q]].transpose(1, 0, 2, 3),
                        (1, 1),
                        [_PHASE_PAD[r], _PHASE_PAD[q]],
                        dimension_numbers=_DIMS,
                    )[0]
                    for q in range(2)
                ]
                for r in range(2)
            ]
            y = jnp.stack([jnp.stack(row, axis=2) for row in phases], axis=1).reshape(2 * h, 2 * w, o)
        else:
            like = jax.ShapeDtypeStruct((self.out_size(h), self.out_size(w), o), x.dtype)
            (y,) = jax.linear_transpose(lambda y: _lax_conv(y, self.weight, self.stride, self.padding), like)(x)
        return y + self.bias[None, None]
