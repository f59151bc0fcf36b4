"""Flow Factorized Representation Learning (Song et al., NeurIPS 2023) in JAX + Equinox + Diffrax.

`import eqx_ffvae` loads the maths and the models. The data pipelines (Grain), the run machinery
(checkpoints, the loop, event files) and the reporting are one import away: `from eqx_ffvae import
runs`, or the lazy attributes `eqx_ffvae.data`, `eqx_ffvae.runs`, `eqx_ffvae.load_run` (every
submodule is one, imported on first use).
"""

import importlib
import importlib.util
from typing import Any

from . import baselines as baselines
from . import distributions as distributions
from . import interfaces as interfaces
from . import methods as methods
from . import metrics as metrics
from . import objectives as objectives
from ._version import __version__ as __version__
from .conv import Conv2d as Conv2d
from .conv import ConvTranspose2d as ConvTranspose2d
from .ffvae_inference import GroupFFVAE as GroupFFVAE
from .ffvae_inference import WeakFFVAE as WeakFFVAE
from .flows import flow as flow
from .flows import frame_times as frame_times
from .flows import laplacian as laplacian
from .flows import velocity as velocity
from .interfaces import AbstractAdversarialModel as AbstractAdversarialModel
from .interfaces import AbstractFlowInferenceModel as AbstractFlowInferenceModel
from .interfaces import AbstractSequenceModel as AbstractSequenceModel
from .interfaces import AbstractTransportModel as AbstractTransportModel
from .layout import Layout as Layout
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
    AbstractAutodiffPotential as AbstractAutodiffPotential,
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

_LAZY = {"load_run": ("eqx_ffvae.runs", "load_run")}


def __getattr__(name: str) -> Any:
    """Submodules (`eqx_ffvae.data`, `eqx_ffvae.runs`, …) and `eqx_ffvae.load_run`, imported on first use."""
    module, attr = _LAZY.get(name, (f"eqx_ffvae.{name}", None))
    if name.startswith("__") or importlib.util.find_spec(module) is None:
        raise AttributeError(f"module 'eqx_ffvae' has no attribute {name!r}")
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)
