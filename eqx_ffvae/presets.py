"""Named run configurations: `quick` (CPU minutes on the embedded MNIST) and the paper's (docs/method.md §7)."""

from __future__ import annotations

import dataclasses

from .flows import LaplacianMethod


@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything a run needs besides the seed and where it writes (`runs.resolve` applies overrides)."""

    dataset: str
    latent_dim: int
    width: int
    potential_width: int
    steps: int
    batch_size: int
    learning_rate: float
    checkpoint_every: int
    method: str = "ffvae"
    hj_weight: float = 1.0
    flow_kl_weight: float = 1.0
    laplacian: LaplacianMethod = "exact"
    density: str = "trace"  # FFVAE training density: "trace" (fast) or "map" (the Euler map's exact log-det)
    workers: int = 0
    eval_sequences: int = 600
    eval_batch_size: int = 50
    ll_samples: int = 100
    ll_sequences: int | None = None  # the first this many scored sequences get a likelihood (None: all)
    drift_samples: int = 0  # the estimator's drift check: this many draws on drift_sequences of them (0: none)
    drift_sequences: int = 20
    shift_batches: int = 20
    validation_fraction: float = 0.0  # held out of training to choose the learning rate (compare --lr-grid)
    learning_rates: tuple[float, ...] = ()  # compare's learning-rate grid for this preset (empty: none)
    full_data: bool = True  # sized for the full dataset: a run on the embedded subset says so
    about: str = ""


_PAPER = dict(steps=90_000, batch_size=128, learning_rate=1e-4, checkpoint_every=1000, workers=2)

_QUICK = Preset(
    dataset="mnist",
    latent_dim=32,
    width=32,
    potential_width=128,
    steps=1500,
    batch_size=32,
    learning_rate=2e-3,
    checkpoint_every=250,
    hj_weight=0.1,
    flow_kl_weight=0.1,
    eval_sequences=150,
    ll_samples=10,
    shift_batches=10,
    full_data=False,
    about="embedded MNIST, small latent: trains, evaluates and draws in minutes on a laptop CPU",
)

# docs/method.md §5: tables estimate log p(x) with S = 100 on 100 held-out sequences and measure the
# estimator's drift against S = 1000 on 20 of them (a likelihood verdict needs a gap beyond it)
_TABLE_LIKELIHOOD = dict(ll_samples=100, ll_sequences=100, drift_samples=1000, drift_sequences=20)

PRESETS = {
    "quick": _QUICK,
    "mnist-medium": dataclasses.replace(
        _QUICK,
        steps=4000,
        learning_rate=1e-3,
        checkpoint_every=500,
        hj_weight=1.0,
        flow_kl_weight=1.0,
        density="map",  # at flow-KL weight 1 the trace form is exploited (results/mnist/README.md)
        validation_fraction=0.1,
        learning_rates=(1e-3, 3e-3),  # two rates: the ~8 h budget (results/mnist/method_steps.json)
        eval_sequences=500,
        **_TABLE_LIKELIHOOD,
        about="Table 1's budget (results/mnist): quick's sizes, the ELBO with the map density, lr grid on validation",
    ),
    "shapes3d-medium": dataclasses.replace(
        _QUICK,
        dataset="shapes3d",
        steps=2000,
        batch_size=16,  # the VAE family encodes and decodes all 8 frames at 64 px (cost: docs/performance.md)
        learning_rate=1e-3,
        checkpoint_every=500,
        hj_weight=1.0,
        flow_kl_weight=1.0,
        density="map",
        validation_fraction=0.1,
        learning_rates=(1e-3, 3e-3),
        eval_sequences=500,
        **_TABLE_LIKELIHOOD,
        about="Table 2's budget (results/shapes3d): mnist-medium's model on Shapes3D (procedural without --data-dir), batch 16",
    ),
    "mnist": Preset(
        dataset="mnist",
        latent_dim=324,
        width=324,
        potential_width=324,
        **_PAPER,
        about="docs/method.md §7 MNIST (d=324, batch 128, Adam 1e-4, 90k steps); full MNIST from --data-dir",
    ),
    "mnist-weak": Preset(
        dataset="mnist",
        latent_dim=324,
        width=324,
        potential_width=324,
        method="ffvae-weak",
        **_PAPER,
        about="as mnist, weakly supervised: k is inferred by q(k|x̄)",
    ),
    "shapes3d": Preset(
        dataset="shapes3d",
        latent_dim=226,
        width=226,
        potential_width=226,
        **{**_PAPER, "steps": 100_000},
        about="docs/method.md §7 Shapes3D (d=226, K=5, T=7); 3dshapes.h5 from --data-dir, else procedural shapes",
    ),
    "falcor3d": Preset(
        dataset="falcor3d",
        latent_dim=324,
        width=324,
        potential_width=324,
        **{**_PAPER, "steps": 100_000},
        about="docs/method.md §7 Falcor3D (d=324, K=7, T=4), 128 px; PNG folder from --data-dir",
    ),
    "isaac3d": Preset(
        dataset="isaac3d",
        latent_dim=324,
        width=324,
        potential_width=324,
        **{**_PAPER, "steps": 100_000},
        about="docs/method.md §7 Isaac3D (d=324, K=8, T=3), 128 px; PNG folder from --data-dir",
    ),
}
