"""The registry of methods: name → label, what it observes of k, its config class and model class.

Adding a method is one file under `eqx_ffvae/baselines/` (a config dataclass and a final model class
implementing `interfaces.AbstractSequenceModel`) and one entry in `METHODS` below; the CLI's choices,
the comparison table and the interface tests all read this registry.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import equinox as eqx
from jaxtyping import PRNGKeyArray

from .baselines.factorvae import FactorVAE, FactorVAEConfig
from .baselines.poflow import PoFlow, PoFlowConfig
from .baselines.slowvae import SlowVAE, SlowVAEConfig
from .baselines.tvae import TVAE, TVAEConfig
from .baselines.vae import VAE, VAEConfig
from .ffvae_authors import AuthorsFFVAE, AuthorsFFVAEConfig
from .ffvae_inference import GroupFFVAE, WeakFFVAE
from .interfaces import AbstractSequenceModel
from .model import FFVAEConfig, FlowFactorizedVAE
from .sta import SparseTransformationVAE, STAConfig

Supervision = Literal["none", "weak", "group", "full"]


@dataclasses.dataclass(frozen=True)
class Method:
    """`defaults` are the method's own settings (β = 4 for β-VAE), applied under the caller's values;
    `supervision` says what it sees of k: "none", "weak" (that a sequence holds one transformation),
    "group" (also that all sequences of a batch share one) or "full" (k itself).

    `fixed` are the settings that define a variant (an ablation's zeroed weight, another training
    protocol): a preset's shared settings do not override them and a caller asking for another value
    is an error. `ablation_of` names the method an ablation removes a term from: it is labelled as an
    ablation, trained at that method's chosen learning rate (`compare --lr-grid` tunes main methods
    only) and over `compare --ablation-seeds` seeds. `batch_shares_k`: the method's training sampler puts
    one transformation in each batch, as its authors' did (k still observed per sequence). `mnist_data`:
    the dataset the method trains on where a preset says MNIST and no dataset is given (STA: sequences
    whose transformations compose)."""

    label: str
    supervision: Supervision
    config_cls: type
    model_cls: type[AbstractSequenceModel]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    ablation_of: str | None = None
    batch_shares_k: bool = False
    mnist_data: str | None = None


def _ffvae_ablation(label: str, **fixed: Any) -> Method:
    """The FFVAE with objective settings fixed. Without the flow KL no density enters the loss, so
    those ablations fix the trace form and train on the fast batched path."""
    return Method(label, "full", FFVAEConfig, FlowFactorizedVAE, fixed=fixed, ablation_of="ffvae")


METHODS: dict[str, Method] = {
    "vae": Method("VAE", "none", VAEConfig, VAE),
    "beta-vae": Method("β-VAE", "none", VAEConfig, VAE, {"beta": 4.0}),
    "factorvae": Method("FactorVAE", "none", FactorVAEConfig, FactorVAE),
    "slowvae": Method("SlowVAE", "weak", SlowVAEConfig, SlowVAE),
    "tvae": Method("TVAE", "weak", TVAEConfig, TVAE),
    "poflow": Method("PoFlow", "full", PoFlowConfig, PoFlow),
    "ffvae": Method("FFVAE", "full", FFVAEConfig, FlowFactorizedVAE),
    "ffvae-weak": Method("FFVAE (weak)", "weak", FFVAEConfig, WeakFFVAE, {"weakly_supervised": True}),
    "ffvae-group": Method("FFVAE (group, authors')", "group", FFVAEConfig, GroupFFVAE, {"group_supervised": True}),
    "ffvae-authors": Method("FFVAE (authors' trainer)", "full", AuthorsFFVAEConfig, AuthorsFFVAE, batch_shares_k=True),
    "ffvae-sde": Method("FFVAE (path-space ELBO)", "full", FFVAEConfig, FlowFactorizedVAE, fixed={"objective": "path"}),
    "ffvae-sde-weak": Method(
        "FFVAE (path-space ELBO, weak)",
        "weak",
        FFVAEConfig,
        WeakFFVAE,
        {"weakly_supervised": True},
        fixed={"objective": "path"},
    ),
    "ffvae-rollout-kl0": Method(
        "rollout VAE, z_0 KL × (T+1)",
        "full",
        FFVAEConfig,
        FlowFactorizedVAE,
        fixed={"flow_kl_weight": 0.0, "hj_weight": 0.0, "density": "trace", "kl0_per_frame": True},
    ),
    "ffvae-rollout-kl0-weak": Method(
        "rollout VAE, z_0 KL × (T+1), weak",
        "weak",
        FFVAEConfig,
        WeakFFVAE,
        {"weakly_supervised": True},
        fixed={"flow_kl_weight": 0.0, "hj_weight": 0.0, "density": "trace", "kl0_per_frame": True},
    ),
    "poflow-authors": Method(
        "PoFlow (authors' protocol)",
        "full",
        PoFlowConfig,
        PoFlow,
        fixed={"protocol": "authors", "classifier_weight": 0.0},
    ),
    "sta": Method("STA (unsupervised)", "none", STAConfig, SparseTransformationVAE, mnist_data="mnist-single"),
    "ffvae-no-flow-kl": _ffvae_ablation("FFVAE − flow KL", flow_kl_weight=0.0, density="trace"),
    "ffvae-no-hj": _ffvae_ablation("FFVAE − HJ", hj_weight=0.0),
    "ffvae-rollout": _ffvae_ablation(
        "FFVAE − flow KL − HJ (rollout VAE)", flow_kl_weight=0.0, hj_weight=0.0, density="trace"
    ),
    "ffvae-0.1": _ffvae_ablation(
        "FFVAE, flow KL and HJ at 0.1, trace density (quick's)", flow_kl_weight=0.1, hj_weight=0.1, density="trace"
    ),
}
"""Main methods first (the FFVAE under its three objectives — the literal ELBO, its authors' trainer, the
path-space ELBO — and the rollout VAE that carries the literal ELBO's rate tax; PoFlow also under its
authors' training protocol), then the FFVAE's objective
ablations (`ablation_of`; docs/method.md §6)."""


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def config_fields(name: str) -> tuple[str, ...]:
    """The fields of method `name`'s config."""
    return tuple(f.name for f in dataclasses.fields(get_method(name).config_cls))


def make_config(name: str, **fields: Any):
    """The config of method `name`: its defaults, overridden by `fields` (the caller wins), and its
    `fixed` settings (a different value for one of them is an error).

    A field the config does not have is an error naming it and the valid ones (`config_fields`
    selects the applicable ones from a shared set of settings).
    """
    method = get_method(name)
    valid = config_fields(name)
    clashes = sorted(k for k in fields if k in method.fixed and fields[k] != method.fixed[k])
    if clashes:
        raise ValueError(
            f"model {name!r} is defined by {', '.join(f'{k}={method.fixed[k]!r}' for k in clashes)}; "
            f"got {', '.join(f'{k}={fields[k]!r}' for k in clashes)} (choose the method with the setting you want)"
        )
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(
            f"{method.config_cls.__name__} (model {name!r}) has no field(s) {', '.join(map(repr, unknown))}; "
            f"valid fields: {', '.join(valid)}"
        )
    chosen = {**method.defaults, **fields, **method.fixed}
    if "image_shape" in chosen:
        chosen["image_shape"] = tuple(chosen["image_shape"])
    return method.config_cls(**chosen)


def make_model(name: str, config, *, key: PRNGKeyArray) -> AbstractSequenceModel:
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
def _construct(model_cls: type, config: Any, key: PRNGKeyArray) -> AbstractSequenceModel:
    return model_cls(config, key=key)
