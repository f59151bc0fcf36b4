"""Flow Factorized Representation Learning (Song et al., NeurIPS 2023) in JAX + Equinox + Diffrax."""

from . import baselines as baselines
from . import distributions as distributions
from . import interfaces as interfaces
from . import methods as methods
from . import metrics as metrics
from . import objectives as objectives
from . import runs as runs
from ._version import __version__ as __version__
from .conv import Conv2d as Conv2d
from .conv import ConvTranspose2d as ConvTranspose2d
from .flows import flow as flow
from .flows import frame_times as frame_times
from .flows import laplacian as laplacian
from .flows import velocity as velocity
from .interfaces import AbstractAdversarialModel as AbstractAdversarialModel
from .interfaces import AbstractSequenceModel as AbstractSequenceModel
from .interfaces import AbstractTransportModel as AbstractTransportModel
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
    SinusoidalEmbedding as SinusoidalEmbedding,
)
from .potentials import (
    WeightedForce as WeightedForce,
)
from .potentials import (
    WeightedPotential as WeightedPotential,
)
from .prior import DiffusionPrior as DiffusionPrior
from .runs import load_run as load_run
