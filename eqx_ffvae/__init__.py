"""Flow Factorized Representation Learning (Song et al., NeurIPS 2023) in JAX + Equinox + Diffrax."""

import importlib.metadata

from . import baselines as baselines
from . import methods as methods
from . import metrics as metrics
from . import objectives as objectives
from .conv import Conv2d as Conv2d
from .conv import ConvTranspose2d as ConvTranspose2d
from .flows import flow as flow
from .flows import laplacian as laplacian
from .flows import velocity as velocity
from .model import FFVAEConfig as FFVAEConfig
from .model import FlowFactorizedVAE as FlowFactorizedVAE
from .nn import (
    ConvDecoder as ConvDecoder,
)
from .nn import (
    ConvEncoder as ConvEncoder,
)
from .nn import (
    SequenceEncoder as SequenceEncoder,
)
from .nn import (
    SinusoidalEmbedding as SinusoidalEmbedding,
)
from .potentials import (
    AbstractPotential as AbstractPotential,
)
from .potentials import (
    Force as Force,
)
from .potentials import (
    MLPPotential as MLPPotential,
)
from .potentials import (
    PotentialBank as PotentialBank,
)
from .potentials import (
    WeightedForce as WeightedForce,
)
from .potentials import (
    WeightedPotential as WeightedPotential,
)
from .prior import DiffusionPrior as DiffusionPrior

try:
    __version__ = importlib.metadata.version("eqx_ffvae")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0.0.0+unknown"
