"""The command line's options: one typed dataclass per subcommand (tyro), with the preset table and
the methods in the help text. Parsing only; `cli` runs them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import tyro

from . import methods
from .data import BUILT_IN
from .layout import CPU_SLICE_SIZE
from .presets import PRESETS

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
ModelName = Literal[tuple(methods.METHODS)]  # type: ignore[valid-type]
DatasetName = Literal[BUILT_IN]  # type: ignore[valid-type]

SUBCOMMANDS = """subcommands (the first argument; train when omitted):
  train     train a model (resuming --out if it holds a checkpoint), evaluate it, draw figures
  eval      rewrite eval.json and the figures of a run from its newest checkpoint
  sample    draw random latents pushed along every flow of a run
  compare   train and evaluate several methods over seeds; write compare.json and compare.md
  claims    the paper's claims put to a comparison's records: claims.json and claims.md
  download  fetch full MNIST or Shapes3D into --data-dir (checksummed, resumable)
"""


def _preset_table() -> str:
    head = f"{'preset':<11} {'data':<9} {'model':<11} {'d':>4} {'width':>5} {'steps':>6} {'batch':>5} {'lr':>7}  about"
    rows = [
        f"{name:<11} {p.dataset:<9} {p.method:<11} {p.latent_dim:>4} {p.width:>5} {p.steps:>6} {p.batch_size:>5} "
        f"{p.learning_rate:>7.0e}  {p.about}"
        for name, p in PRESETS.items()
    ]
    return "presets:\n  " + "\n  ".join([head, *rows])


EPILOG = f"{SUBCOMMANDS}\n{_preset_table()}\n\nmodels: {', '.join(f'{n} ({m.label}, k: {m.supervision})' for n, m in methods.METHODS.items())}"


def _per_preset(field: str) -> str:
    values = {}
    for name, p in PRESETS.items():
        values.setdefault(getattr(p, field), []).append(name)
    listed = "; ".join(f"{', '.join(names)}: {value}" for value, names in values.items())
    return f"(default: the preset's — {listed})"


def _override(help_text: str, field: str, metavar: str = "INT"):
    return tyro.conf.arg(metavar=metavar, help=help_text, help_behavior_hint=_per_preset(field))


@dataclasses.dataclass(kw_only=True)
class Cached:
    """Commands that compile models (train, eval, compare)."""

    compile_cache: bool = True
    """keep compiled programs in JAX's persistent compilation cache ($EQX_FFVAE_COMPILE_CACHE, else
    ~/.cache/eqx_ffvae/jax), so a repeated or resumed run loads its training step instead of
    compiling it again"""


@dataclasses.dataclass
class Shared(Cached):
    """Options a training run and a comparison share."""

    preset: PresetName = "quick"
    """the named configuration (the presets table above)"""
    data_dir: Annotated[
        Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="(default: embedded or procedural data)")
    ] = None
    """dataset folder (MNIST IDX files, 3dshapes.h5, or the PNG folder)"""
    data: Annotated[
        Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="(default: the preset's dataset)")
    ] = None
    """your own sequences instead of the preset's dataset: an .npz with frames [N, T+1, C, H, W] or
    [N, T+1, H, W, C] (uint8, or float in [0, 1]), and k [N] with transforms (names) if labelled, or
    num_flows if not (then only methods that do not read k train on it); the preset gives the model's
    sizes and the training settings"""
    dataset: Annotated[
        DatasetName | None, tyro.conf.arg(metavar="NAME", help_behavior_hint="(default: the preset's dataset)")
    ] = None
    """a built-in dataset instead of the preset's (mnist-single / mnist-double: MNIST with one / two
    transformations acting at each step, for --model sta)"""
    steps: Annotated[int | None, _override("training steps", "steps")] = None
    latent_dim: Annotated[int | None, _override("latent dimension d", "latent_dim")] = None
    width: Annotated[int | None, _override("conv width of the encoder/decoder", "width")] = None
    potential_width: Annotated[
        int | None, _override("hidden width of the potential and force MLPs (FFVAE, PoFlow)", "potential_width")
    ] = None
    workers: Annotated[int | None, _override("data-loading processes (0 = in the main process)", "workers")] = None
    eval_sequences: Annotated[int | None, _override("held-out sequences scored", "eval_sequences")] = None
    ll_samples: Annotated[
        int | None,
        _override(
            "importance samples per frame for the log-likelihood (docs/method.md §5: 100 for tables)", "ll_samples"
        ),
    ] = None
    ll_sequences: Annotated[
        int | None,
        _override(
            "held-out sequences whose log-likelihood is estimated, the first of those scored (None: all)",
            "ll_sequences",
        ),
    ] = None
    drift_samples: Annotated[
        int | None,
        _override(
            "importance samples of the estimator's drift check on the first 20 of them (0: no check; tables: 1000)",
            "drift_samples",
        ),
    ] = None
    validation_fraction: Annotated[
        float | None,
        _override(
            "share of the data held out of training as validation sequences (to choose learning rates)",
            "validation_fraction",
            "FLOAT",
        ),
    ] = None


@dataclasses.dataclass
class Train(Shared):
    """Train a model (resuming --out if it holds a checkpoint), then evaluate it and draw figures."""

    model: Annotated[
        ModelName | None,
        tyro.conf.arg(metavar="{" + ",".join(methods.METHODS) + "}", help_behavior_hint=_per_preset("method")),
    ] = None
    """the method: ffvae (k observed), ffvae-weak (k inferred), ffvae-group (the authors' variant: one k
    per batch) or a baseline"""
    seed: int = 0
    """seeds the model, the data order and the training noise"""
    out: Annotated[
        Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="(default: runs/<preset>-<time>/)")
    ] = None
    """run directory; one holding a checkpoint is resumed"""
    fresh: bool = False
    """delete what an earlier run wrote in --out (only in a run directory) and start over"""
    batch_size: Annotated[int | None, _override("sequences per step, over all devices", "batch_size")] = None
    learning_rate: Annotated[float | None, _override("Adam learning rate", "learning_rate", "FLOAT")] = None
    checkpoint_every: Annotated[
        int | None, _override("save a checkpoint every N steps (and always at the end)", "checkpoint_every")
    ] = None
    laplacian: Annotated[
        Literal["exact", "hvp", "hessian", "hutchinson"] | None,
        tyro.conf.arg(metavar="{exact,hvp,hessian,hutchinson}", help_behavior_hint=_per_preset("laplacian")),
    ] = None
    """divergence of the flows: exact (forward-mode trace), hvp / hessian (slower exact references), or
    Hutchinson's estimator"""
    density: Annotated[
        Literal["trace", "map"] | None,
        tyro.conf.arg(metavar="{trace,map}", help_behavior_hint=_per_preset("density")),
    ] = None
    """how the FFVAE's training tracks log q_t: trace (the Euler step's −hΔu; fast, but exploited at
    flow-KL weight 1) or map (the Euler map's exact log-determinant; docs/method.md §3)"""
    likelihood: Annotated[
        Literal["bernoulli", "gaussian"] | None, tyro.conf.arg(help_behavior_hint="(default: bernoulli)")
    ] = None
    """each pixel's likelihood given the decoder's mean: bernoulli (binary-ish images: MNIST, the renders)
    or gaussian (natural images), with σ per channel learned unless --pixel-scale fixes it"""
    pixel_scale: Annotated[
        float | None, tyro.conf.arg(metavar="FLOAT", help_behavior_hint="(default: learned, from 0.1)")
    ] = None
    """the Gaussian likelihood's fixed σ per pixel value in [0, 1]"""
    slice_size: Annotated[
        int | None,
        tyro.conf.arg(
            metavar="INT",
            help="sequences per flow slice and decoder chunk (memory and speed, never the numbers)",
            help_behavior_hint=f"(default: {CPU_SLICE_SIZE} on a CPU, the whole batch on a GPU or TPU)",
        ),
    ] = None
    frames_on: Literal["auto", "host", "device"] = "auto"
    """where training frames are made: host (Grain builds float32 frames), device (the host ships one
    uint8 digit or uint8 frames per sequence and the step makes the frames), auto (device, on every
    backend: the loop is faster so on a CPU too)"""
    factor_sizes: Annotated[
        tuple[int, ...] | None, tyro.conf.arg(metavar="INT…", help_behavior_hint="(default: the dataset's grid)")
    ] = None
    """override the dataset's factor grid (a reduced grid of a factor dataset, e.g. for tests)"""
    num_frames: Annotated[int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: the dataset's)")] = (
        None
    )
    """frames per sequence T+1"""
    matmul_precision: Literal["float32", "tensorfloat32", "bfloat16"] = "float32"
    """precision of the step's matmuls/convs on GPUs/TPUs (tensorfloat32, bfloat16: faster); CPUs use float32"""
    skip_eval: bool = False
    """train only; run `eval --run DIR` later"""
    coordinator: Annotated[str | None, tyro.conf.arg(metavar="HOST:PORT", help_behavior_hint="(default: one host)")] = (
        None
    )
    """multi-host: address of process 0 (jax.distributed); also needs --num-processes/--process-id"""
    num_processes: int = 1
    """multi-host: number of processes"""
    process_id: int = 0
    """multi-host: this process's index"""


@dataclasses.dataclass
class Eval(Cached):
    """Evaluate a saved run: rewrite its eval.json and figures from its newest checkpoint."""

    run: Path
    """the run directory (holds config.json and checkpoints/)"""


@dataclasses.dataclass
class Sample:
    """Draw random latents pushed along every flow of a saved run."""

    run: Path
    """the run directory"""
    num: int = 6
    """samples per flow"""
    seed: int = 0
    """seeds the random latents"""


@dataclasses.dataclass
class Compare(Shared):
    """Train and evaluate every listed method for the same steps, batch and width over several seeds;
    write compare.json and compare.md (methods × every probe and log-likelihood, mean ± std over seeds,
    paired differences of each method minus FFVAE with 95% seed-level intervals).
    Re-running resumes: finished runs are reused, interrupted ones continue from their checkpoints.
    Two comparisons given one --results share it: each (method, seed) record is claimed before it is
    trained, so the second leaves it for last and reads it; a damaged record is named and moved aside."""

    seeds: int = 3
    """seeds 0 … N−1 per method"""
    models: tuple[ModelName, ...] = tuple(methods.METHODS)
    """methods to compare (rows of the table)"""
    out: Annotated[
        Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="(default: runs/compare-<preset>)")
    ] = None
    """where the runs and the table go"""
    results: Annotated[Path | None, tyro.conf.arg(metavar="PATH")] = None
    """a folder to commit (e.g. results/mnist): each finished run's eval.json, config.json and metrics
    summary land in PATH/runs/<method>/seed<i>/ as it finishes, runs recorded there are not trained
    again, and the table is written there too, so a table can be built in chunks"""
    lr_grid: Annotated[
        tuple[float, ...] | None,
        tyro.conf.arg(metavar="FLOAT…", help_behavior_hint=_per_preset("learning_rates")),
    ] = None
    """learning rates to choose each main method's from, by its own loss on validation sequences
    (seed 0 at every rate; needs --validation-fraction > 0); empty: the preset's learning rate"""
    ablation_seeds: Annotated[int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: --seeds)")] = None
    """seeds of the ablation rows (FFVAE with objective terms removed)"""


@dataclasses.dataclass
class Claims:
    """Put the paper's claims (FFVAE < PoFlow < the other baselines on every E_k; weak ≈ supervised;
    FFVAE the highest likelihood; the baselines' own order) to the records of a `compare --results`
    folder: a verdict per claim from paired 95% seed-level intervals (it holds when every comparison
    holds; it fails when any fails after Holm's correction over its comparisons; docs/method.md §5), with columns that do not discriminate and likelihood gaps within the
    estimator's drift named instead of judged, and the ablation rows against PoFlow and the FFVAE.
    Writes claims.json and claims.md into that folder; trains nothing."""

    results: Annotated[Path, tyro.conf.arg(metavar="PATH")]
    """the folder given to `compare --results` (it holds runs/<method>/seed<i>/eval.json)"""
    readme: Annotated[Path | None, tyro.conf.arg(metavar="PATH")] = None
    """also rewrite the summary of these claims in this README (between its `<!-- claims PATH … -->` markers)"""


@dataclasses.dataclass
class Download:
    """Fetch a dataset into --data-dir, checked against its published checksum; an interrupted download
    resumes when the command is run again. Then train on it with --data-dir."""

    dataset: tyro.conf.Positional[Literal["mnist", "shapes3d"]]
    """mnist: the four IDX files (SHA-256 each); shapes3d: DeepMind's 3dshapes.h5 (MD5 and size)"""
    data_dir: Annotated[Path, tyro.conf.arg(metavar="PATH")]
    """the folder to fill"""
    url: Annotated[str | None, tyro.conf.arg(metavar="URL", help_behavior_hint="(default: the official source)")] = None
    """another source: for mnist the folder URL holding the IDX files, for shapes3d the file's URL"""


@dataclasses.dataclass
class Prepare:
    """Decode a PNG dataset once into a compact store next to its images (uint8 .npy at the preset's
    size): training then reads frames from it instead of decoding and downsampling PNGs per frame."""

    dataset: tyro.conf.Positional[Literal["falcor3d", "isaac3d"]]
    """the NVlabs PNG dataset"""
    data_dir: Annotated[Path, tyro.conf.arg(metavar="PATH")]
    """the folder of its PNGs (the one given to --data-dir)"""
    factor_sizes: Annotated[tuple[int, ...] | None, tyro.conf.arg(metavar="N")] = None
    """the factor grid of a reduced folder (as in training; default: the dataset's)"""


COMMANDS = {
    "train": Train,
    "eval": Eval,
    "sample": Sample,
    "compare": Compare,
    "claims": Claims,
    "download": Download,
    "prepare": Prepare,
}
_SHARED = tuple(
    f.name for f in dataclasses.fields(Shared) if f.name not in {g.name for g in dataclasses.fields(Cached)}
)
