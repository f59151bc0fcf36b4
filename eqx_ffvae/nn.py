"""Encoders and decoder (docs/method.md §7 architecture, width configurable).

28 and 64 px: conv k4s2 ×2, conv k(n/4) to 1×1, then 1×1 convs; widths w, 2w, 3w, 2w.
128 px: conv k4s2 ×4 at width w, conv k8 to 1×1, then 1×1 convs. The decoder mirrors the encoder
and always returns exactly the input's spatial size.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from einops import rearrange
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from .conv import Conv2d, ConvImpl, ConvTranspose2d
from .distributions import bernoulli_log_likelihood
from .layout import Layout, sum_over_slices

DECODER_SAVED = "decoder_preactivation"
"""Name of the decoder's spatial pre-activations: the only values `ConvDecoder.log_likelihoods` keeps."""

SUPPORTED_SIZES = (28, 64, 128)


def _check_size(image_size: int) -> None:
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(
            f"image_size={image_size} is not supported; use one of {SUPPORTED_SIZES} "
            "(resize the data, or add a stack for that size in eqx_ffvae/nn.py)"
        )


def _channel_plan(image_size: int, width: int) -> list[tuple[int, int, int]]:
    """(out_channels, kernel, stride) of each strided layer, and the final layer to 1×1."""
    _check_size(image_size)
    if image_size == 128:
        strided = [(width, 4, 2)] * 4
        return strided + [(width, 8, 1)]
    return [(width, 4, 2), (2 * width, 4, 2), (3 * width, image_size // 4, 1)]


class ConvNet(eqx.Module):
    """Image `(C, H, W)` → feature vector: the shared trunk of both encoders."""

    convs: tuple[Conv2d, ...]
    heads: tuple[Conv2d, ...]

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        width: int,
        out_features: int,
        *,
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        plan = _channel_plan(image_size, width)
        keys = jr.split(key, len(plan) + 2)
        convs, c = [], in_channels
        for (out, kernel, stride), k in zip(plan, keys):
            convs.append(Conv2d(c, out, kernel, stride, 1 if stride == 2 else 0, impl=impl, key=k))
            c = out
        self.convs = tuple(convs)
        hidden = width if image_size == 128 else 2 * width
        self.heads = (
            Conv2d(c, hidden, 1, impl=impl, key=keys[-2]),
            Conv2d(hidden, out_features, 1, impl=impl, key=keys[-1]),
        )

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " f"]:
        x = jnp.transpose(x, (1, 2, 0))  # channels-last inside: patches are contiguous for the GEMMs
        for layer in (*self.convs, self.heads[0]):
            x = jax.nn.silu(layer(x))
        return self.heads[1](x)[0, 0]


class ConvEncoder(eqx.Module):
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
        if h != w:
            raise ValueError(f"images must be square, got image_shape={image_shape}")
        self.net = ConvNet(c, h, width, 2 * latent_dim, impl=impl, key=key)
        self.latent_dim = latent_dim

    def __call__(self, x: Float[Array, "c h w"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        out = self.net(x)
        return out[: self.latent_dim], out[self.latent_dim :]


class ConvDecoder(eqx.Module):
    """p(x | z): Bernoulli logits of every pixel, the mirror of `ConvEncoder`."""

    heads: tuple[Conv2d, ...]
    deconvs: tuple[ConvTranspose2d, ...]
    image_shape: tuple[int, int, int] = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        width: int,
        *,
        impl: ConvImpl = "fast",
        key: PRNGKeyArray,
    ):
        c, h, _ = image_shape
        plan = _channel_plan(h, width)
        keys = jr.split(key, len(plan) + 2)
        first = plan[-1][0]
        hidden = width if h == 128 else 2 * width
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

    def frame_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "c h w"]) -> Scalar:
        """Σ_pixels log Bernoulli(x | sigmoid(decoder(z))) of one frame."""
        return self._channels_last_log_likelihood(z, channels_last(x))

    def _channels_last_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "h w c"]) -> Scalar:
        return feature_log_likelihood(self.deconvs[1:], self.features(z), x)

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
        one = functools.partial(feature_log_likelihood, self.deconvs[1:])
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
    return sum_over_slices(_slice_log_likelihood, decoder.deconvs[1:], split(features), split(xs))


def _slice_log_likelihood(deconvs: tuple, features: Array, xs: Float[Array, "b h w c"]) -> Scalar:
    return jnp.sum(jax.vmap(functools.partial(feature_log_likelihood, deconvs))(features, xs))


def channels_last(x: Float[Array, "*b c h w"]) -> Float[Array, "*b h w c"]:
    """Images (…, C, H, W) → (…, H, W, C): the layout the decoder computes in."""
    return jnp.moveaxis(x, -3, -1)


def _pixel_logits(deconvs: tuple[ConvTranspose2d, ...], x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c2"]:
    """The spatial part of the decoder: the smallest feature map → Bernoulli logits, channels last."""
    for layer in deconvs[:-1]:
        x = jax.nn.silu(checkpoint_name(layer(x), DECODER_SAVED))
    return deconvs[-1](x)


def feature_log_likelihood(deconvs: tuple[ConvTranspose2d, ...], feature: Array, x: Float[Array, "h w c"]) -> Scalar:
    """The likelihood against channels-last targets: transposing the 3-channel logits instead costs as
    much as the softplus (a strided copy inside the loop, and its transpose in the backward pass)."""
    return bernoulli_log_likelihood(_pixel_logits(deconvs, feature), x)


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
        c, h, _ = image_shape
        net = ConvNet(num_frames * c, h, width, num_flows, impl=impl, key=key)
        last = net.heads[-1]
        zeroed = eqx.tree_at(
            lambda m: (m.weight, m.bias), last, (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias))
        )
        self.net = eqx.tree_at(lambda n: n.heads[-1], net, zeroed)

    def __call__(self, x_seq: Float[Array, "t c h w"]) -> Float[Array, " k"]:
        t, c, h, w = x_seq.shape
        return self.net(x_seq.reshape(t * c, h, w))
