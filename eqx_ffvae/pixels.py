"""Pixel likelihoods p(x | decoder output): Bernoulli or Gaussian (docs/method.md §7)."""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar

from .distributions import bernoulli_log_likelihood

PixelLikelihoodName = Literal["bernoulli", "gaussian"]
PIXEL_LIKELIHOODS = ("bernoulli", "gaussian")


class AbstractPixelLikelihood(eqx.Module):
    """p(x | decoder output): `__call__(out, x, channel_axis)` is Σ_pixels log p(x | out). The decoder's
    output is the logit of each pixel's mean (the mean image is `sigmoid(out)` for every likelihood),
    so reconstructions and the equivariance errors read the same whichever is chosen."""

    @abc.abstractmethod
    def __call__(self, out: Float[Array, ...], x: Float[Array, ...], channel_axis: int) -> Scalar:
        raise NotImplementedError


class BernoulliPixels(AbstractPixelLikelihood):
    """Each pixel Bernoulli(sigmoid(out)): binary images, and the paper's choice for MNIST and the renders
    (a pmf on {0, 1} evaluated at x ∈ [0, 1])."""

    def __call__(self, out: Float[Array, ...], x: Float[Array, ...], channel_axis: int) -> Scalar:
        del channel_axis
        return bernoulli_log_likelihood(out, x)


class GaussianPixels(AbstractPixelLikelihood):
    """Each pixel N(x; sigmoid(out), σ_c²), one σ per channel: natural images. `log_scale` is learned
    (`scale=None`, starting at σ = 0.1) or fixed at log(scale) (held by a stop-gradient: the optimiser
    never moves it). A density on pixel values: its log p(x) is not comparable with a Bernoulli's."""

    log_scale: Float[Array, " c"]
    learned: bool = eqx.field(static=True)

    def __init__(self, channels: int, scale: float | None = None):
        if scale is not None and not (isinstance(scale, float | int) and scale > 0):
            raise ValueError(f"the Gaussian's pixel scale σ must be a number > 0 (or None: learned), got {scale!r}")
        self.log_scale = jnp.full((channels,), jnp.log(0.1 if scale is None else float(scale)), jnp.float32)
        self.learned = scale is None

    def __call__(self, out: Float[Array, ...], x: Float[Array, ...], channel_axis: int) -> Scalar:
        log_scale = self.log_scale if self.learned else jax.lax.stop_gradient(self.log_scale)
        shape = [1] * x.ndim
        shape[channel_axis] = -1
        log_scale = log_scale.reshape(shape)
        z = (x - jax.nn.sigmoid(out)) * jnp.exp(-log_scale)
        return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + 2 * log_scale + z**2)


def pixel_likelihood(name: str, channels: int, scale: float | None = None) -> AbstractPixelLikelihood:
    """The pixel likelihood a config names: "bernoulli", or "gaussian" with σ = `scale` (None: learned)."""
    if name == "bernoulli":
        if scale is not None:
            raise ValueError(f"pixel_scale is the Gaussian's σ; the Bernoulli likelihood has none (got {scale})")
        return BernoulliPixels()
    if name == "gaussian":
        return GaussianPixels(channels, scale)
    raise ValueError(f"likelihood must be one of {', '.join(PIXEL_LIKELIHOODS)}, got {name!r}")
