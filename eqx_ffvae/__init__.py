"""Flow Factorized Representation Learning (Song et al., NeurIPS 2023) in JAX + Equinox + Diffrax."""

import importlib.metadata

from . import metrics as metrics, objectives as objectives
from .conv import Conv2d as Conv2d, ConvTranspose2d as ConvTranspose2d
from .flows import flow as flow, laplacian as laplacian, velocity as velocity
from .model import FFVAEConfig as FFVAEConfig, FlowFactorizedVAE as FlowFactorizedVAE
from .nn import (
    ConvDecoder as ConvDecoder,
    ConvEncoder as ConvEncoder,
    SequenceEncoder as SequenceEncoder,
    SinusoidalEmbedding as SinusoidalEmbedding,
)
from .potentials import (
    AbstractPotential as AbstractPotential,
    Force as Force,
    MLPPotential as MLPPotential,
    PotentialBank as PotentialBank,
    WeightedPotential as WeightedPotential,
)
from .prior import DiffusionPrior as DiffusionPrior

try:
    __version__ = importlib.metadata.version("eqx_ffvae")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0.0.0+unknown"
