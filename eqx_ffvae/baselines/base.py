"""What the frame-wise baselines share: a Gaussian encoder per frame, the decoder, an N(0, I) prior and
the importance proposal "encoder on x_t" (docs/method.md §5), with the same conv family as the FFVAE (docs/method.md §6)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

from .. import distributions as dist
from ..conv import ConvImpl
from ..interfaces import AbstractSequenceModel
from ..nn import ConvDecoder, ConvEncoder
from ..pixels import PixelLikelihoodName, pixel_likelihood


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """The fields every method of a comparison shares (same data shape, latent size and width)."""

    image_shape: tuple[int, int, int] = (3, 28, 28)
    num_frames: int = 9
    latent_dim: int = 32
    num_flows: int = 3
    width: int = 32
    conv_impl: ConvImpl = "fast"
    likelihood: PixelLikelihoodName = "bernoulli"
    pixel_scale: float | None = None

    def __post_init__(self):
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be ≥ 2 (x_0 and at least one transformed frame), got {self.num_frames}")
        pixel_likelihood(self.likelihood, self.image_shape[0], self.pixel_scale)  # raises on a bad choice


def frame_elbo(
    encoder: ConvEncoder, decoder: ConvDecoder, x: Float[Array, "c h w"], key: PRNGKeyArray
) -> tuple[Scalar, Scalar, Float[Array, " d"]]:
    """(log p(x|z), KL[q(z|x) ‖ N(0, I)], z) of one frame with one reparameterised z."""
    mu, logvar = encoder(x)
    z = dist.gaussian_sample(mu, logvar, key)
    return decoder.output_log_likelihood(decoder(z), x), dist.kl_to_standard_normal(mu, logvar), z


class AbstractFrameVAE(AbstractSequenceModel):
    """Encoder, decoder and N(0, I) prior; a final subclass adds its objective (`loss`, `batch_loss`).

    Every frame is a separate observation: log p(x_t) is estimated with the encoder on x_t as proposal
    and N(0, I) as prior, the same for every frame and every k.
    """

    encoder: eqx.AbstractVar[ConvEncoder]
    decoder: eqx.AbstractVar[ConvDecoder]

    def encode(self, x: Float[Array, "c h w"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        return self.encoder(x)

    def decode(self, z: Float[Array, " d"]) -> Float[Array, "c h w"]:
        return self.decoder(z)

    def prior_log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        del k, t
        return dist.standard_normal_log_prob(z)

    def importance_proposal(
        self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """One z_t ~ q(z|x_t) per frame, with its log-density."""
        del k
        return jax.vmap(lambda x, kk: self.frame_proposal(x, key=kk))(x_seq, jr.split(key, x_seq.shape[0]))

    def proposal_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "c h w"]) -> Scalar:
        return self.decoder.output_log_likelihood(self.decode(z), x)

    def frame_proposal(self, x: Float[Array, "c h w"], *, key: PRNGKeyArray) -> tuple[Float[Array, " d"], Scalar]:
        return dist.gaussian_draw(*self.encoder(x), key)


def conv_pair(config: BaselineConfig, latent_dim: int, *, key: PRNGKeyArray) -> tuple[ConvEncoder, ConvDecoder]:
    """The docs/method.md §7 encoder/decoder pair at the config's width, for a latent of size `latent_dim`."""
    enc_key, dec_key = jr.split(key)
    c = config
    return (
        ConvEncoder(c.image_shape, latent_dim, c.width, impl=c.conv_impl, key=enc_key),
        ConvDecoder(
            c.image_shape,
            latent_dim,
            c.width,
            pixels=pixel_likelihood(c.likelihood, c.image_shape[0], c.pixel_scale),
            impl=c.conv_impl,
            key=dec_key,
        ),
    )
