"""2-D convolutions on channels-last images `(H, W, C)`, each in the form XLA:CPU runs fastest.

Measured by `benchmarks/step.py` (docs/performance.md): XLA's convolutions, transposed ones and the gradient
convolutions above all, run far below its matmul rate. So every layer the models use is written
as GEMMs with no multiplication by an inserted zero: a kernel that covers the whole input
(or a transposed conv of a 1×1 input) is one dense matmul, a 1×1 kernel is a matmul over pixels, a
strided conv is one GEMM over its patch matrix (the encoder sees one frame per sequence, so the
patches are small), and the stride-2, k=4, p=1 transposed conv (the decoder's, run on every frame)
is sub-pixel: one GEMM for all taps, each output phase's four taps added with one-pixel shifts. The
k=4, stride-2, p=1 patch extraction and that shifted sum are each other's adjoints and each other's
custom VJPs (so reverse mode works through them; forward mode does not: use `impl="lax"`). Weights are
stored in the layout those GEMMs read (`(k, k, in, out)` for a conv, `(in, k, k, out)` for a
transposed conv), so no step copies them. `impl="lax"` computes the same functions with
`lax.conv_general_dilated` and its exact transpose; the tests compare the two.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

ConvImpl = Literal["fast", "lax"]
_DIMS = ("NHWC", "HWIO", "NHWC")


def _uniform(key: PRNGKeyArray, shape: tuple[int, ...], fan_in: float | int) -> Array:
    bound = 1.0 / math.sqrt(fan_in)
    return jr.uniform(key, shape, jnp.float32, -bound, bound)


def _lax_conv(x: Array, weight: Array, stride: int, padding: int) -> Array:
    return jax.lax.conv_general_dilated(
        x[None], weight, (stride, stride), [(padding, padding)] * 2, dimension_numbers=_DIMS
    )[0]


def _pair(kernel: int | tuple[int, int]) -> tuple[int, int]:
    return (kernel, kernel) if isinstance(kernel, int) else (int(kernel[0]), int(kernel[1]))


class Conv2d(eqx.Module):
    """`y = W ⋆ x + b` (cross-correlation, zero padding) on `(H, W, C_in)`; weight `(kh, kw, in, out)`
    (`kernel` an int for a square one)."""

    weight: Float[Array, "kh kw i o"]
    bias: Float[Array, " o"]
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    impl: ConvImpl = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        *,
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        wkey, bkey = jr.split(key)
        kh, kw = _pair(kernel)
        fan_in = in_channels * kh * kw
        self.weight = _uniform(wkey, (kh, kw, in_channels, out_channels), fan_in)
        self.bias = _uniform(bkey, (out_channels,), fan_in)
        self.stride, self.padding, self.impl = stride, padding, impl

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "ho wo o"]:
        kh, kw = self.weight.shape[:2]
        h, w, _ = x.shape
        fast = self.impl == "fast"
        if fast and kh == kw == 1 and self.stride == 1 and self.padding == 0:
            y = x @ self.weight[0, 0]
        elif fast and (kh, kw) == (h, w) and self.padding == 0:
            y = (x.reshape(-1) @ self.weight.reshape(-1, self.weight.shape[-1]))[None, None]
        elif fast and (kh, kw, self.stride, self.padding) == (4, 4, 2, 1) and h % 2 == 0 == w % 2:
            y = _k4s2_conv(x, self.weight)
        elif fast and self.stride > 1:
            y = _strided_conv(x, self.weight, self.stride, self.padding)
        else:
            y = _lax_conv(x, self.weight, self.stride, self.padding)
        return y + self.bias[None, None]


# Sub-pixel form of the stride-2, k=4, p=1 transposed conv: output phase r (rows 2a + r) sums input
# rows a + shift times kernel rows tap, for (tap, shift) in _PHASE_TAP_SHIFTS[r].
_PHASE_TAP_SHIFTS = (((3, -1), (1, 0)), ((2, 0), (0, 1)))


def _shift(v: Array, s: int, axis: int) -> Array:
    """v[a + s] along `axis`, zero where a + s falls outside (s ∈ {-1, 0, 1})."""
    if s == 0:
        return v
    n = v.shape[axis]
    kept = jax.lax.slice_in_dim(v, max(s, 0), n + min(s, 0), axis=axis)
    pad = [(0, 0)] * v.ndim
    pad[axis] = (0, 1) if s > 0 else (1, 0)
    return jnp.pad(kept, pad)


def _shifted_sum(u: Array, rows: tuple, cols: tuple) -> Array:
    """Σ over (tap, shift) pairs of rows × cols of u[· + row shift, · + col shift, row tap, col tap].

    u has shape (h, w, k, k, o), indexed by kernel tap; XLA fuses the shifted adds into one pass.
    """
    return sum(_shift(_shift(u[:, :, ty, tx], sy, 0), sx, 1) for ty, sy in rows for tx, sx in cols)


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def _strided_conv(x: Array, weight: Array, stride: int, padding: int) -> Array:
    """A strided conv as one GEMM over its patch matrix `(h_out·w_out, k·k·i)` (strided slices only).

    Rematerialised: the backward pass rebuilds the patch matrix (k²/s² times the input) from x.
    """
    kh, kw, i, o = weight.shape
    h, w, _ = x.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    xp = jnp.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    patches = jnp.stack(
        [
            xp[ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride]
            for ky in range(kh)
            for kx in range(kw)
        ],
        axis=2,
    )
    return patches.reshape(ho, wo, kh * kw * i) @ weight.reshape(kh * kw * i, o)


@jax.checkpoint
def _k4s2_conv(x: Array, weight: Array) -> Array:
    """The stride-2, k=4, p=1 conv (the encoder's) as one GEMM over `_im2col`'s patch matrix: the
    adjoint of the decoder's layer. Rematerialised: the backward pass rebuilds the patches from x."""
    h, w, i = x.shape
    return _im2col(x).reshape(h // 2, w // 2, 16 * i) @ weight.reshape(16 * i, -1)


def _subpixel_transpose(x: Array, weight: Array) -> Array:
    """Stride-2, k=4, p=1 transposed conv as one GEMM `(h·w, i) × (i, 16·o)` for all 16 taps (the
    weight's own layout), then `_col2im`. One GEMM rather than one per output phase: its backward is
    one `dx` GEMM too."""
    h, w, i = x.shape
    return _col2im((x @ weight.reshape(i, -1)).reshape(h, w, 4, 4, weight.shape[-1]))


@jax.custom_vjp
def _col2im(u: Array) -> Array:
    """(h, w, 4, 4, o) → (2h, 2w, o): y[2a + ty − 1, 2b + tx − 1] += u[a, b, ty, tx] (inside only).

    Each output phase adds its four taps with one-pixel shifts, then the phases are interleaved.
    Its VJP is `_im2col` and `_im2col`'s is this: autodiff's own transposes of the tap slices (or
    of the strided patch slices) are sixteen zero-padded copies summed, as slow as the GEMMs here.
    """
    h, w = u.shape[:2]

    phase = lambda r, q: _shifted_sum(u, _PHASE_TAP_SHIFTS[r], _PHASE_TAP_SHIFTS[q])  # noqa: E731
    rows = [jnp.stack([phase(r, q) for q in range(2)], axis=2) for r in range(2)]
    return jnp.stack(rows, axis=1).reshape(2 * h, 2 * w, u.shape[-1])


@jax.custom_vjp
def _im2col(g: Array) -> Array:
    """(2h, 2w, c) → (h, w, 4, 4, c): the k=4, stride-2, p=1 patches, u[a, b, ty, tx] =
    g[2a + ty − 1, 2b + tx − 1] (zero outside); the adjoint of `_col2im`.

    With ty = 2β + j, that is row 2(a + β) + j of g padded by one. The 16 taps are stacked in the
    output's own layout, so it is written once, with no transpose after.
    """
    hh, ww, o = g.shape
    h, w = hh // 2, ww // 2
    gp = jnp.pad(g, ((1, 1), (1, 1), (0, 0))).reshape(h + 1, 2, w + 1, 2, o)

    def tap(ty: int, tx: int) -> Array:
        (by, j), (bx, m) = divmod(ty, 2), divmod(tx, 2)
        return gp[by : by + h, j, bx : bx + w, m]

    return jnp.stack([jnp.stack([tap(ty, tx) for tx in range(4)], axis=2) for ty in range(4)], axis=2)


_col2im.defvjp(lambda u: (_col2im(u), None), lambda _, g: (_im2col(g),))
_im2col.defvjp(lambda g: (_im2col(g), None), lambda _, u: (_col2im(u),))


class ConvTranspose2d(eqx.Module):
    """The adjoint of a `Conv2d` (PyTorch's `ConvTranspose2d`, output_padding 0), on `(H, W, C_in)`.

    Weight `(in, kh, kw, out)` (`kernel` an int for a square one); output size
    `(H - 1) * stride - 2 * padding + kh` by the same with W and kw.
    """

    weight: Float[Array, "i kh kw o"]
    bias: Float[Array, " o"]
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    impl: ConvImpl = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        *,
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        wkey, bkey = jr.split(key)
        kh, kw = _pair(kernel)
        fan_in = in_channels * kh * kw / (stride * stride)
        self.weight = _uniform(wkey, (in_channels, kh, kw, out_channels), fan_in)
        self.bias = _uniform(bkey, (out_channels,), fan_in)
        self.stride, self.padding, self.impl = stride, padding, impl

    def out_size(self, size: int, axis: int = 0) -> int:
        """The output's size along image axis `axis` (0: height, 1: width) for an input of `size`."""
        return (size - 1) * self.stride - 2 * self.padding + self.weight.shape[1 + axis]

    def _lax_transpose(self, x: Array) -> Array:
        h, w, _ = x.shape
        like = jax.ShapeDtypeStruct((self.out_size(h, 0), self.out_size(w, 1), self.weight.shape[-1]), x.dtype)
        kernel = self.weight.transpose(1, 2, 3, 0)
        (y,) = jax.linear_transpose(lambda y: _lax_conv(y, kernel, self.stride, self.padding), like)(x)
        return y

    def __call__(self, x: Float[Array, "h w i"]) -> Float[Array, "ho wo o"]:
        i, kh, kw, o = self.weight.shape
        h, w, _ = x.shape
        plain = self.stride == 1 and self.padding == 0
        if self.impl == "lax":
            y = self._lax_transpose(x)
        elif h == w == 1 and plain:
            y = (x[0, 0] @ self.weight.reshape(i, -1)).reshape(kh, kw, o)
        elif kh == kw == 1 and plain:
            y = x @ self.weight[:, 0, 0]
        elif (kh, kw, self.stride, self.padding) == (4, 4, 2, 1):
            y = _subpixel_transpose(x, self.weight)
        else:
            y = self._lax_transpose(x)
        return y + self.bias[None, None]
