"""Encoders and decoder (docs/method.md §7 architecture, width configurable).

H × W up to 64 px (28, 64, and e.g. 32 × 48): conv k4s2 ×2, conv k(H/4 × W/4) to 1×1, then 1×1
convs; widths w, 2w, 3w, 2w. Either side over 64 (128): conv k4s2 ×4 at width w, conv k(H/16 × W/16)
to 1×1, then 1×1 convs (`image_size_problem` says which sizes work). The decoder mirrors the encoder
and always returns exactly the input's spatial size; its pixel likelihood is Bernoulli or Gaussian
(`pixels.pixel_likelihood`).
"""

from __future__ import annotations

import abc
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from einops import rearrange
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from .conv import Conv2d, ConvImpl, ConvTranspose2d
from .layout import Layout, sum_over_slices
from .pixels import AbstractPixelLikelihood, BernoulliPixels

DECODER_SAVED = "decoder_preactivation"
"""Name of the decoder's spatial pre-activations: the only values `ConvDecoder.log_likelihoods` keeps."""


def image_size_problem(height: int, width: int) -> str | None:
    """Why the convolutional stack cannot take `height × width` images, or None when it can.

    Images up to 64 px on both sides go through two stride-2 layers and a last layer whose kernel
    covers the remaining (H/4 × W/4) map: both sides a multiple of 4. Larger ones (either side over
    64) go through four stride-2 layers, then an (H/16 × W/16) kernel: both sides a multiple of 16.
    Nothing is padded or cropped. 28, 64 and 128 px (the paper's datasets) keep the paper's layers."""
    step = 16 if max(height, width) > 64 else 4
    if min(height, width) < 8 or height % step or width % step:
        return (
            f"{height}×{width} images cannot go through the convolutional encoder/decoder: sides of 8 px or more, "
            f"multiples of 4 when both are ≤ 64 px, of 16 when either is larger (e.g. 28×28, 32×48, 64×64, 128×96)"
        )
    return None


def check_image_size(height: int, width: int) -> None:
    """Raise ValueError (saying which sizes work) if `image_size_problem`."""
    problem = image_size_problem(height, width)
    if problem:
        raise ValueError(f"{problem}; resize the data")


def _channel_plan(height: int, width: int, channels: int) -> list[tuple[int, tuple[int, int], int]]:
    """(out_channels, kernel, stride) of each strided layer, and the final layer to 1×1."""
    check_image_size(height, width)
    if max(height, width) > 64:
        return [(channels, (4, 4), 2)] * 4 + [(channels, (height // 16, width // 16), 1)]
    return [(channels, (4, 4), 2), (2 * channels, (4, 4), 2), (3 * channels, (height // 4, width // 4), 1)]


def _hidden(height: int, width: int, channels: int) -> int:
    return channels if max(height, width) > 64 else 2 * channels


class AbstractEncoder(eqx.Module):
    """q(z | x) = N(mu, diag exp(logvar)) of one frame: `__call__(x) -> (mu, logvar)`, each of size d.
    A frame is whatever array the data holds (an image (C, H, W), a vector (D,), …)."""

    @abc.abstractmethod
    def __call__(self, x: Float[Array, "*x"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        raise NotImplementedError


class AbstractDecoder(eqx.Module):
    """p(x | z) of one frame and the batched forms of its log-likelihood the models train and score with.

    `__call__(z)` is the logit of each value's mean (the mean is its sigmoid); `output_log_likelihood`
    scores a frame against such an output. The batched forms give the same numbers as
    `frame_log_likelihood` frame by frame, laid out for memory: `log_likelihoods` (one sequence's
    frames, for `loss`), `sliced_log_likelihoods` (m × b frames, scoring) and `summed_log_likelihood`
    (their sum, for training, with a `layout`). Subclass `AbstractFrameDecoder` to get all of them from
    `__call__` and a pixel likelihood; `ConvDecoder` writes its own memory-bounded forms.
    """

    @abc.abstractmethod
    def __call__(self, z: Float[Array, " d"]) -> Float[Array, "*x"]:
        raise NotImplementedError

    @abc.abstractmethod
    def output_log_likelihood(self, out: Float[Array, "*x"], x: Float[Array, "*x"]) -> Scalar:
        raise NotImplementedError

    @abc.abstractmethod
    def frame_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "*x"]) -> Scalar:
        raise NotImplementedError

    @abc.abstractmethod
    def log_likelihoods(self, zs: Float[Array, "n d"], xs: Float[Array, "n ..."]) -> Float[Array, " n"]:
        raise NotImplementedError

    @abc.abstractmethod
    def sliced_log_likelihoods(self, zs: Float[Array, "m b d"], xs: Float[Array, "m b ..."]) -> Float[Array, "m b"]:
        raise NotImplementedError

    @abc.abstractmethod
    def summed_log_likelihood(self, zs: Float[Array, "m b d"], xs: Float[Array, "m b ..."], layout: Layout) -> Scalar:
        raise NotImplementedError


class AbstractFrameDecoder(AbstractDecoder):
    """A decoder given by `__call__` and its `pixels` (the likelihood of each value, its axis 0 the
    channel axis): every batched form is `frame_log_likelihood` vmapped, the layout unused. For small
    decoders (an MLP on vectors) where memory is no concern."""

    pixels: eqx.AbstractVar[AbstractPixelLikelihood]

    def output_log_likelihood(self, out: Float[Array, "*x"], x: Float[Array, "*x"]) -> Scalar:
        return self.pixels(out, x, 0)

    def frame_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "*x"]) -> Scalar:
        return self.output_log_likelihood(self(z), x)

    def log_likelihoods(self, zs: Float[Array, "n d"], xs: Float[Array, "n ..."]) -> Float[Array, " n"]:
        return jax.vmap(self.frame_log_likelihood)(zs, xs)

    def sliced_log_likelihoods(self, zs: Float[Array, "m b d"], xs: Float[Array, "m b ..."]) -> Float[Array, "m b"]:
        return jax.vmap(self.log_likelihoods)(zs, xs)

    def summed_log_likelihood(self, zs: Float[Array, "m b d"], xs: Float[Array, "m b ..."], layout: Layout) -> Scalar:
        del layout
        return jnp.sum(self.sliced_log_likelihoods(zs, xs))


class MLPEncoder(AbstractEncoder):
    """q(z | x) for vector frames (D,): an MLP to (mu, logvar)."""

    mlp: eqx.nn.MLP
    latent_dim: int = eqx.field(static=True)

    def __init__(self, data_dim: int, latent_dim: int, width: int, depth: int = 2, *, key: PRNGKeyArray):
        self.mlp = eqx.nn.MLP(data_dim, 2 * latent_dim, width, depth, activation=jax.nn.silu, key=key)
        self.latent_dim = latent_dim

    def __call__(self, x: Float[Array, " D"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        out = self.mlp(x)
        return out[: self.latent_dim], out[self.latent_dim :]


class MLPDecoder(AbstractFrameDecoder):
    """p(x | z) for vector frames (D,): an MLP to the logit of each value's mean, with a Bernoulli or
    Gaussian (one σ per value) likelihood."""

    mlp: eqx.nn.MLP
    pixels: AbstractPixelLikelihood

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        width: int,
        depth: int = 2,
        *,
        pixels: AbstractPixelLikelihood | None = None,
        key: PRNGKeyArray,
    ):
        self.mlp = eqx.nn.MLP(latent_dim, data_dim, width, depth, activation=jax.nn.silu, key=key)
        self.pixels = BernoulliPixels() if pixels is None else pixels

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, " D"]:
        return self.mlp(z)


class ConvNet(eqx.Module):
    """Image `(C, H, W)` → feature vector: the shared trunk of both encoders."""

    convs: tuple[Conv2d, ...]
    heads: tuple[Conv2d, ...]

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        width: int,
        out_features: int,
        *,
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        plan = _channel_plan(*image_size, width)
        keys = jr.split(key, len(plan) + 2)
        convs, c = [], in_channels
        for (out, kernel, stride), k in zip(plan, keys):
            convs.append(Conv2d(c, out, kernel, stride, 1 if stride == 2 else 0, impl=impl, key=k))
            c = out
        self.convs = tuple(convs)
        hidden = _hidden(*image_size, width)
        self.heads = (
            Conv2d(c, hidden, 1, impl=impl, key=keys[-2]),
            Conv2d(hidden, out_features, 1, impl=impl, key=keys[-1]),
        )

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " f"]:
        x = jnp.transpose(x, (1, 2, 0))  # channels-last inside: patches are contiguous for the GEMMs
        for layer in (*self.convs, self.heads[0]):
            x = jax.nn.silu(layer(x))
        return self.heads[1](x)[0, 0]


class ConvEncoder(AbstractEncoder):
    """q(z_0 | x_0) = N(mu, diag exp(logvar))."""

    net: ConvNet
    latent_dim: int = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        width: int,
        *,
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        c, h, w = image_shape
        self.net = ConvNet(c, (h, w), width, 2 * latent_dim, impl=impl, key=key)
        self.latent_dim = latent_dim

    def __call__(self, x: Float[Array, "c h w"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        out = self.net(x)
        return out[: self.latent_dim], out[self.latent_dim :]


class ConvDecoder(AbstractDecoder):
    """p(x | z): the logit of every pixel's mean, the mirror of `ConvEncoder`, and the pixel likelihood
    on it (`pixels`: Bernoulli by default)."""

    heads: tuple[Conv2d, ...]
    deconvs: tuple[ConvTranspose2d, ...]
    pixels: AbstractPixelLikelihood
    image_shape: tuple[int, int, int] = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        width: int,
        *,
        pixels: AbstractPixelLikelihood | None = None,
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        c, h, w = image_shape
        plan = _channel_plan(h, w, width)
        keys = jr.split(key, len(plan) + 2)
        first = plan[-1][0]
        hidden = _hidden(h, w, width)
        self.heads = (
            Conv2d(latent_dim, hidden, 1, impl=impl, key=keys[0]),
            Conv2d(hidden, first, 1, impl=impl, key=keys[1]),
        )
        ins = [out for out, _, _ in plan][::-1]
        outs = ins[1:] + [c]
        self.deconvs = tuple(
            ConvTranspose2d(i, o, kernel, stride, 1 if stride == 2 else 0, impl=impl, key=k)
            for i, o, (_, kernel, stride), k in zip(ins, outs, plan[::-1], keys[2:])
        )
        self.pixels = BernoulliPixels() if pixels is None else pixels
        self.image_shape = image_shape

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, "c h w"]:
        return jnp.transpose(_pixel_logits(self.deconvs[1:], self.features(z)), (2, 0, 1))

    def features(self, z: Float[Array, " d"]) -> Float[Array, "h w c"]:
        """The dense first part, z → the smallest feature map: the 1×1 heads and the first transposed
        conv, whose input is 1×1 (each one matmul; the first transposed conv holds most weights)."""
        x = z[None, None]
        for layer in self.heads:
            x = jax.nn.silu(layer(x))
        return jax.nn.silu(checkpoint_name(self.deconvs[0](x), DECODER_SAVED))

    def output_log_likelihood(self, out: Float[Array, "c h w"], x: Float[Array, "c h w"]) -> Scalar:
        """Σ_pixels log p(x | out) for an output `out` of this decoder (`__call__`), by its `pixels`."""
        return self.pixels(out, x, 0)

    def frame_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "c h w"]) -> Scalar:
        """Σ_pixels log p(x | decoder(z)) of one frame."""
        return self._channels_last_log_likelihood(z, channels_last(x))

    def _channels_last_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "h w c"]) -> Scalar:
        return feature_log_likelihood(self.tail, self.features(z), x)

    @property
    def tail(self) -> tuple:
        """What follows `features`: the spatial layers and the pixel likelihood."""
        return self.deconvs[1:], self.pixels

    def log_likelihoods(self, zs: Float[Array, "n d"], xs: Float[Array, "n c h w"]) -> Float[Array, " n"]:
        """`frame_log_likelihood` of each frame, decoded one frame at a time.

        A loop over frames (batched over sequences by the caller's vmap) bounds the decoder's working
        memory to one frame of the batch; only its spatial pre-activations are kept for the backward
        pass, everything else is recomputed from them (no convolution is recomputed). The targets are
        moved to channels-last once, before the loop.
        """
        policy = jax.checkpoint_policies.save_only_these_names(DECODER_SAVED)
        frame_ll = jax.checkpoint(lambda z, x: self._channels_last_log_likelihood(z, x), policy=policy)
        return jax.lax.map(lambda zx: frame_ll(*zx), (zs, channels_last(xs)))

    def sliced_log_likelihoods(self, zs: Float[Array, "m b d"], xs: Float[Array, "m b c h w"]) -> Float[Array, "m b"]:
        """`frame_log_likelihood` of m·b frames, without gradients in mind (forward passes that score).

        `features` runs on all frames at once (one GEMM), the spatial layers on one slice of b frames
        at a time, which bounds their working memory to a slice.
        """
        m = zs.shape[0]
        features = jax.vmap(self.features)(rearrange(zs, "m b d -> (m b) d"))
        features = rearrange(features, "(m b) h w c -> m b h w c", m=m)
        one = functools.partial(feature_log_likelihood, self.tail)
        return jax.lax.map(lambda fx: jax.vmap(one)(*fx), (features, channels_last(xs)))

    def summed_log_likelihood(self, zs: Float[Array, "m b d"], xs: Float[Array, "m b c h w"], layout: Layout) -> Scalar:
        """Σ over all m·b frames of log p(x | z), for training, with gradients taken inside the loops.

        `features` runs on b frames at a time (its weight gradient is one GEMM over b rows), the
        spatial layers on `layout.rows(b)` of those at a time. Each loop takes its gradient slice by
        slice (`layout.sum_over_slices`), so the backward pass keeps no decoder activation at all, and
        nothing is recomputed.
        """
        chunk = functools.partial(_chunk_log_likelihood, layout=layout)
        return sum_over_slices(chunk, self, zs, channels_last(xs))


def _chunk_log_likelihood(
    decoder: ConvDecoder, zs: Float[Array, "b d"], xs: Float[Array, "b h w c"], layout: Layout
) -> Scalar:
    split = lambda a: rearrange(a, "(s r) ... -> s r ...", r=layout.rows(zs.shape[0]))  # noqa: E731
    features = jax.vmap(decoder.features)(zs)
    return sum_over_slices(_slice_log_likelihood, decoder.tail, split(features), split(xs))


def _slice_log_likelihood(tail: tuple, features: Array, xs: Float[Array, "b h w c"]) -> Scalar:
    return jnp.sum(jax.vmap(functools.partial(feature_log_likelihood, tail))(features, xs))


def channels_last(x: Float[Array, "*b c h w"]) -> Float[Array, "*b h w c"]:
    """Images (…, C, H, W) → (…, H, W, C): the layout the decoder computes in."""
    return jnp.moveaxis(x, -3, -1)


def _pixel_logits(deconvs: tuple[ConvTranspose2d, ...], x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c2"]:
    """The spatial part of the decoder: the smallest feature map → Bernoulli logits, channels last."""
    for layer in deconvs[:-1]:
        x = jax.nn.silu(checkpoint_name(layer(x), DECODER_SAVED))
    return deconvs[-1](x)


def feature_log_likelihood(tail: tuple, feature: Array, x: Float[Array, "h w c"]) -> Scalar:
    """The likelihood against channels-last targets, `tail` = (spatial layers, pixel likelihood):
    transposing the 3-channel logits instead costs as much as the softplus (a strided copy inside the
    loop, and its transpose in the backward pass)."""
    deconvs, pixels = tail
    return pixels(_pixel_logits(deconvs, feature), x, -1)


class SequenceEncoder(eqx.Module):
    """q(k | x̄): frames stacked on channels → K logits (weak supervision).

    The logits layer starts at zero, so q starts exactly uniform: no flow is favoured before training.
    """

    net: ConvNet

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_frames: int,
        num_flows: int,
        width: int,
        *,
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        c, h, w = image_shape
        net = ConvNet(num_frames * c, (h, w), width, num_flows, impl=impl, key=key)
        last = net.heads[-1]
        zeroed = eqx.tree_at(
            lambda m: (m.weight, m.bias), last, (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias))
        )
        self.net = eqx.tree_at(lambda n: n.heads[-1], net, zeroed)

    def __call__(self, x_seq: Float[Array, "t c h w"]) -> Float[Array, " k"]:
        t, c, h, w = x_seq.shape
        return self.net(x_seq.reshape(t * c, h, w))
