"""The comparison methods of docs/method.md §6, each with the interface `eqx_ffvae.metrics` scores."""

from .base import AbstractFrameVAE as AbstractFrameVAE
from .base import BaselineConfig as BaselineConfig
from .factorvae import (
    Discriminator as Discriminator,
)
from .factorvae import (
    FactorVAE as FactorVAE,
)
from .factorvae import (
    FactorVAEConfig as FactorVAEConfig,
)
from .factorvae import (
    discriminator_loss as discriminator_loss,
)
from .factorvae import (
    permute_dims as permute_dims,
)
from .factorvae import (
    total_correlation as total_correlation,
)
from .poflow import PoFlow as PoFlow
from .poflow import PoFlowConfig as PoFlowConfig
from .poflow import classifier_loss as classifier_loss
from .poflow import wave_residual as wave_residual
from .slowvae import SlowVAE as SlowVAE
from .slowvae import SlowVAEConfig as SlowVAEConfig
from .slowvae import kl_gaussian_laplace as kl_gaussian_laplace
from .tvae import TVAE as TVAE
from .tvae import TVAEConfig as TVAEConfig
from .tvae import capsule_roll as capsule_roll
from .vae import VAE as VAE
from .vae import VAEConfig as VAEConfig
