"""Every method of the comparison table by name: its config, model class and supervision."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import equinox as eqx
from jaxtyping import PRNGKeyArray

from .baselines import (
    TVAE,
    VAE,
    FactorVAE,
    FactorVAEConfig,
    PoFlow,
    PoFlowConfig,
    SlowVAE,
    SlowVAEConfig,
    TVAEConfig,
    VAEConfig,
)
from .model import FFVAEConfig, FlowFactorizedVAE


@dataclasses.dataclass(frozen=True)
class Method:
    """`defaults` are the method's own settings (β = 4 for β-VAE); `supervision` says what it sees of
    k: "none", "weak" (that a sequence holds one transformation), "group" (also that all sequences
    of a batch share one) or "full" (k itself)."""

    label: str
    supervision: Literal["none", "weak", "group", "full"]
    config_cls: type
    model_cls: type
    defaults: dict = dataclasses.field(default_factory=dict)


METHODS: dict[str, Method] = {
    "vae": Method("VAE", "none", VAEConfig, VAE),
    "beta-vae": Method("β-VAE", "none", VAEConfig, VAE, {"beta": 4.0}),
    "factorvae": Method("FactorVAE", "none", FactorVAEConfig, FactorVAE),
    "slowvae": Method("SlowVAE", "weak", SlowVAEConfig, SlowVAE),
    "tvae": Method("TVAE", "weak", TVAEConfig, TVAE),
    "poflow": Method("PoFlow", "full", PoFlowConfig, PoFlow),
    "ffvae": Method(
        "FFVAE", "full", FFVAEConfig, FlowFactorizedVAE, {"weakly_supervised": False, "group_supervised": False}
    ),
    "ffvae-weak": Method("FFVAE (weak)", "weak", FFVAEConfig, FlowFactorizedVAE, {"weakly_supervised": True}),
    "ffvae-group": Method(
        "FFVAE (group, authors')", "group", FFVAEConfig, FlowFactorizedVAE, {"group_supervised": True}
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def make_config(name: str, **fields: Any):
    """The config of method `name`: its defaults, then whichever of `fields` it has (others ignored,
    so one set of shared settings configures every method)."""
    method = get_method(name)
    known = {f.name for f in dataclasses.fields(method.config_cls)}
    chosen = {k: v for k, v in fields.items() if k in known}
    if "image_shape" in chosen:
        chosen["image_shape"] = tuple(chosen["image_shape"])
    return method.config_cls(**{**chosen, **method.defaults})


def make_model(name: str, config, *, key: PRNGKeyArray) -> eqx.Module:
    """`model_cls(config, key=key)` of method `name`, every weight drawn by one compiled program.

    The weights are those of eager construction, bit for bit on CPU (a test checks). Eager
    construction compiles one small random-number program per weight shape: ~7 s for the `quick`
    preset, against ~3 s here.
    """
    method = get_method(name)
    if not isinstance(config, method.config_cls):
        raise TypeError(f"model {name!r} needs a {method.config_cls.__name__}, got {type(config).__name__}")
    return _construct(method.model_cls, config, key)


# Weight init is counter hashing and a multiply-add per entry: LLVM's light optimisation level
# compiles it in half the time and gives the same bits (level 0 does not: it drops the fused
# multiply-add that eager construction uses).
@eqx.filter_jit(compiler_options={"xla_backend_optimization_level": 1})
def _construct(model_cls: type, config: Any, key: PRNGKeyArray) -> eqx.Module:
    return model_cls(config, key=key)
