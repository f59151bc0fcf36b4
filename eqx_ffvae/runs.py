"""A training run as a library object: its spec, its directory, the loop, and loading it back.

    spec = runs.resolve(preset="quick", steps=200, seed=0)       # a validated RunSpec
    run = runs.TrainingRun(spec, "runs/mine")                     # locks the directory
    for event in run: ...                                          # StepRecord, Saved, ... (no printing)
    model, spec = runs.load_run("runs/mine")                       # in a notebook or another program

Guarantees of a run directory (README "Runs and faults"):
* one process at a time: an exclusive `fcntl` lock on `<dir>/.lock` for the life of a run, released
  by the OS if the process dies (a stale lock is simply taken);
* nothing is written before the spec, the data files and the checkpoint (if any) have been checked;
  config.json is written atomically and describes what the checkpoints hold;
* `fresh=True` deletes only in a directory that is a run of this package, and only what it wrote;
* resume survives damage: an unreadable newest checkpoint is moved aside (never deleted) and the
  newest readable one is used; metrics.jsonl is cut back to the resumed step, tolerating a partial
  last line; a run that never checkpointed leaves no records behind.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.experimental import multihost_utils

from . import compile_cache, data, methods
from ._version import __version__
from .checkpoint import Checkpointer, UnreadableCheckpoint
from .data import device
from .evaluation import evaluate, fit_linear_shifts
from .interfaces import AbstractSequenceModel
from .presets import PRESETS
from .provenance import provenance
from .tensorboard import training_writer
from .training import (
    MATMUL_PRECISIONS,
    FlatStep,
    init_opt_state,
    make_mesh,
    make_optimizer,
    make_step,
    replicate,
    shard_batch,
    with_step,
)

EVAL_SEED = 1234
MARKER = "eqx_ffvae"
"""config.json's key that marks a directory as a run of this package."""


class RunError(Exception):
    """An expected failure: its message is one line saying what is wrong and how to fix it."""


class NonFiniteLoss(RunError):
    """Training stopped on a non-finite loss (a learning-rate grid scores such a run as failed)."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a run is scored: held-out sequences, their batch size, importance samples per frame, and
    training batches used to fit the best linear shift."""

    eval_sequences: int = 600
    eval_batch_size: int = 50
    ll_samples: int = 100
    shift_batches: int = 20

    def __post_init__(self):
        for name in ("eval_sequences", "eval_batch_size", "ll_samples", "shift_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RunError(f"--{name.replace('_', '-')} must be an integer ≥ 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The resolved, validated configuration of a run, saved as config.json.

    `model` is the method's config dataclass (`methods.make_config`); `slice_size` lays the training
    step out in memory and does not change its numbers, so a run may resume with another.
    `frames_on`: where training frames are made (`frames_made_on_device`): "host" (Grain builds float32
    frames), "device" (the host ships compact uint8 data, `data.device` makes the frames inside the
    step) or "auto" (the device, on every backend: on a 2-core CPU too the loop is faster so, docs/performance.md).
    """

    preset: str
    method: str
    dataset: str
    data_dir: str | None
    seed: int
    steps: int
    batch_size: int
    learning_rate: float
    checkpoint_every: int
    workers: int
    model: Any
    eval: EvalSettings
    factor_sizes: tuple[int, ...] | None = None
    matmul_precision: str = "float32"
    slice_size: int = 16
    validation_fraction: float = 0.0
    frames_on: str = "auto"

    # Fields a resumed run must share with the checkpoint it continues.
    IDENTITY = (
        "method",
        "dataset",
        "data_dir",
        "factor_sizes",
        "seed",
        "batch_size",
        "learning_rate",
        "model",
        "validation_fraction",
    )

    def __post_init__(self):
        _check_int("--seed", self.seed, 0)
        _check_int("--steps", self.steps, 1)
        _check_int("--batch-size", self.batch_size, 1)
        _check_int("--checkpoint-every", self.checkpoint_every, 1)
        _check_int("--workers", self.workers, 0)
        _check_int("--slice-size", self.slice_size, 1)
        if self.frames_on not in FRAMES_ON:
            raise RunError(f"--frames-on must be one of {', '.join(FRAMES_ON)}, got {self.frames_on!r}")
        if not (
            isinstance(self.learning_rate, float | int) and math.isfinite(self.learning_rate) and self.learning_rate > 0
        ):
            raise RunError(f"--learning-rate must be a finite number > 0, got {self.learning_rate!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise RunError(
                f"--matmul-precision must be one of {', '.join(MATMUL_PRECISIONS)}, got {self.matmul_precision!r}"
            )
        method = methods.get_method(self.method)
        if not isinstance(self.model, method.config_cls):
            raise RunError(
                f"model {self.method!r} needs a {method.config_cls.__name__}, got {type(self.model).__name__}"
            )
        if not (isinstance(self.validation_fraction, float | int) and 0 <= self.validation_fraction < 0.9):
            raise RunError(
                f"--validation-fraction must be in [0, 0.9) (the share of the data held out of training "
                f"for choosing hyper-parameters), got {self.validation_fraction!r}"
            )
        if self.factor_sizes is not None and any(s < 1 for s in self.factor_sizes):
            raise RunError(f"--factor-sizes must all be ≥ 1, got {self.factor_sizes}")

    @property
    def grouped(self) -> bool:
        """One transformation in each batch: group supervision, or a method whose authors sampled so."""
        method = methods.get_method(self.method)
        return method.supervision == "group" or method.batch_shares_k

    @property
    def transforms(self) -> tuple[str, ...]:
        return data.dataset_info(self.dataset).transforms

    def to_json(self) -> dict:
        blob = dataclasses.asdict(self)
        return {MARKER: __version__, **json.loads(json.dumps(blob))}

    def identity(self) -> dict:
        """The IDENTITY fields as JSON values."""
        blob = self.to_json()
        return {f: blob[f] for f in self.IDENTITY}

    @classmethod
    def from_json(cls, blob: dict) -> RunSpec:
        """The spec of a config.json (also one written before slice_size left the model config)."""
        blob = {k: v for k, v in blob.items() if k not in (MARKER, "provenance")}
        model = dict(blob.pop("model"))
        slice_size = model.pop("slice_size", None)
        if slice_size is not None and "slice_size" not in blob:
            blob["slice_size"] = slice_size
        eval_blob = blob.pop("eval")
        factor_sizes = blob.pop("factor_sizes", None)
        try:
            config = methods.make_config(blob["method"], **model)
            return cls(
                **blob,
                model=config,
                eval=EvalSettings(**eval_blob),
                factor_sizes=None if factor_sizes is None else tuple(factor_sizes),
            )
        except (TypeError, ValueError) as err:
            raise RunError(f"config.json does not describe a run of this version of eqx_ffvae: {err}") from None


def _check_int(flag: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RunError(f"{flag} must be an integer ≥ {low}, got {value!r}")


def resolve(
    preset: str = "quick",
    *,
    model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    checkpoint_every: int | None = None,
    workers: int | None = None,
    slice_size: int | None = None,
    eval_sequences: int | None = None,
    ll_samples: int | None = None,
    factor_sizes: tuple[int, ...] | None = None,
    matmul_precision: str = "float32",
    validation_fraction: float | None = None,
    frames_on: str = "auto",
    notes: list[str] | None = None,
    **model_fields: Any,
) -> RunSpec:
    """The RunSpec of preset `preset` with the given overrides (None: the preset's value).

    `model_fields` override the method's config (latent_dim, width, potential_width, laplacian,
    num_frames, …); shared settings a method's config does not have (a VAE's potential width) are not
    applied to it, but a name no method has is an error. Notes about choices made (the offline
    dataset used without a data_dir) are appended to `notes`.
    """
    if preset not in PRESETS:
        raise RunError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    dataset = p.dataset
    info = data.dataset_info(dataset)
    if data_dir is None and info.offline is not None:
        dataset = info.offline
        if notes is not None:
            notes.append(
                f"no --data-dir given for {p.dataset}: using the {dataset} dataset ({data.dataset_info(dataset).about})"
            )
        info = data.dataset_info(dataset)
    if data_dir is None and info.data_dir == "optional" and p.full_data and notes is not None:
        notes.append(
            f"NOTICE: preset {preset} is sized for the full {dataset} data, but no --data-dir was given, so it trains "
            f"on the small subset embedded in the package; fetch the full data with `python train/run.py download "
            f"{dataset} --data-dir D` and pass --data-dir D"
        )
    if data_dir is None and info.data_dir == "required":
        raise RunError(
            f"preset {preset} needs --data-dir pointing at the {dataset} data ({info.about}; see the README)"
        )
    if data_dir is not None:
        path = Path(data_dir)
        if not path.exists():
            raise RunError(f"--data-dir {path} does not exist; pass the folder that holds the {dataset} files")
        if info.source in ("mnist", "png-folder") and not path.is_dir():
            raise RunError(f"--data-dir {path} is a file; pass the folder that holds the {dataset} files")
        data_dir = str(path.resolve())
    method = model or p.method
    try:
        methods.get_method(method)
    except ValueError as err:
        raise RunError(f"--model: {err}") from None
    shared = {
        "image_shape": info.image_shape,
        "num_frames": info.num_frames,
        "num_flows": info.num_flows,
        "latent_dim": p.latent_dim,
        "width": p.width,
        "potential_width": p.potential_width,
        "laplacian": p.laplacian,
        "density": p.density,
        "hj_weight": p.hj_weight,
        "flow_kl_weight": p.flow_kl_weight,
    }
    known = set().union(*(methods.config_fields(name) for name in methods.METHODS))
    unknown = sorted(set(model_fields) - known)
    if unknown:
        raise RunError(f"no method has the setting(s) {', '.join(unknown)}; settings: {', '.join(sorted(known))}")
    shared = {k: v for k, v in shared.items() if k not in methods.get_method(method).fixed}
    shared.update({k: v for k, v in model_fields.items() if v is not None})
    applicable = set(methods.config_fields(method))
    try:
        config = methods.make_config(method, **{k: v for k, v in shared.items() if k in applicable})
    except ValueError as err:
        raise RunError(str(err).replace("num_frames", "--num-frames")) from None
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return RunSpec(
        preset=preset,
        method=method,
        dataset=dataset,
        data_dir=data_dir,
        seed=seed,
        steps=pick(steps, p.steps),
        batch_size=pick(batch_size, p.batch_size),
        learning_rate=float(pick(learning_rate, p.learning_rate)),
        checkpoint_every=pick(checkpoint_every, p.checkpoint_every),
        workers=pick(workers, p.workers),
        model=config,
        eval=EvalSettings(
            eval_sequences=pick(eval_sequences, p.eval_sequences),
            eval_batch_size=p.eval_batch_size,
            ll_samples=pick(ll_samples, p.ll_samples),
            shift_batches=p.shift_batches,
        ),
        factor_sizes=None if factor_sizes is None else tuple(factor_sizes),
        matmul_precision=matmul_precision,
        slice_size=pick(slice_size, default_slice_size(p.slice_size, pick(batch_size, p.batch_size))),
        validation_fraction=float(pick(validation_fraction, p.validation_fraction)),
        frames_on=frames_on,
    )


def default_slice_size(cpu_value: int, batch_size: int, backend: str | None = None) -> int:
    """The slice size a run gets when --slice-size is not given: the preset's value on a CPU (tuned to
    its caches: 16 was 12% faster than 32 at `quick` on 2 cores), the whole batch on an accelerator
    (on one H200 at the paper's MNIST configuration, slices of 128 were 1.3× faster than of 32).
    Never changes the numbers, only memory and speed; `backend` defaults to jax's."""
    backend = jax.default_backend() if backend is None else backend
    return cpu_value if backend == "cpu" else batch_size


# ---------------------------------------------------------------------------------------------------
# Data


def sequences(
    spec: RunSpec,
    *,
    split: str = "train",
    seed: int | None = None,
    num_epochs: int | None = None,
    grouped: bool = False,
    probes: bool = False,
    compact: bool = False,
):
    """The run's sequences of `split`; `grouped`: a group-supervised run's training order (one k per
    batch); `probes`: with the ground truth of the extrapolation and composition probes (MNIST);
    `compact`: as the training step takes them (uint8, finished on the device by `data.device.frames`)."""
    try:
        return data.sequence_dataset(
            spec.dataset,
            split=split,
            seed=spec.seed if seed is None else seed,
            data_dir=spec.data_dir,
            num_epochs=num_epochs,
            num_frames=spec.model.num_frames,
            factor_sizes=spec.factor_sizes,
            group_size=spec.batch_size if grouped else None,
            probes=probes,
            validation_fraction=spec.validation_fraction,
            compact=compact,
        )
    except (FileNotFoundError, ValueError, OSError, EOFError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(message.replace("factor_sizes=", "--factor-sizes")) from None


def check_data(spec: RunSpec) -> None:
    """Open the train and test splits and build one sequence of each, so a missing, truncated or
    malformed data file is reported (one line naming it) before anything is written or trained."""
    for split in ("train", "test") + (("validation",) if spec.validation_fraction else ()):
        ds = sequences(spec, split=split, seed=EVAL_SEED, num_epochs=1)
        if len(ds) == 0:
            raise RunError(f"the {split} split of {spec.dataset} is empty; check --data-dir and --factor-sizes")
        try:
            ds[0]
        except (OSError, ValueError, EOFError, KeyError) as err:
            raise RunError(f"cannot read the {split} split of {spec.dataset} ({spec.data_dir}): {err}") from None


def has_probes(spec: RunSpec) -> bool:
    """Whether the run's data has the analytic transformations that extrapolation and composition need."""
    return data.dataset_info(spec.dataset).source == "mnist"


def eval_batches(spec: RunSpec, split: str, count: int) -> list[dict]:
    """`count` batches of the run's evaluation order (fixed seed) of `split`; the test split of MNIST
    carries the extrapolation and composition ground truth too."""
    bs = spec.eval.eval_batch_size
    probes = split == "test" and has_probes(spec)
    ds = sequences(spec, split=split, seed=EVAL_SEED, num_epochs=1 if split == "test" else None, probes=probes)
    it = data.batch_iterator(ds, bs, drop_remainder=False)
    keys = ("frames", "k", "extrapolation", "composition") if probes else ("frames", "k")
    return [{name: b[name] for name in keys} for b in itertools.islice(it, count)]


# ---------------------------------------------------------------------------------------------------
# Models


def build(spec: RunSpec):
    """Model, optimiser and optimiser state of a fresh run (keys from the seed, by role)."""
    model_key, _, _ = jr.split(jr.key(spec.seed), 3)
    model = methods.make_model(spec.method, spec.model, key=model_key)
    optimizer = make_optimizer(spec.learning_rate)
    return model, optimizer, init_opt_state(model, optimizer)


def train_key(spec: RunSpec) -> jax.Array:
    return jr.split(jr.key(spec.seed), 3)[2]


def _provenance_history(run_dir: Path) -> list[dict]:
    """The `provenance` records of an existing config.json (one per start of the run), else []."""
    try:
        history = json.loads((run_dir / "config.json").read_text()).get("provenance", [])
    except (OSError, ValueError, AttributeError):
        return []
    return history if isinstance(history, list) else []


def read_spec(run_dir: str | os.PathLike) -> RunSpec:
    """The RunSpec of a run directory's config.json."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.json); pass the --out of a training run")
    try:
        blob = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not valid JSON ({err}); restore it or start the run over with --fresh") from None
    return RunSpec.from_json(blob)


def load_run(run_dir: str | os.PathLike) -> tuple[AbstractSequenceModel, RunSpec]:
    """(model, spec) of a run directory, the model at its newest readable checkpoint. Reads only."""
    spec = read_spec(run_dir)
    return restore_model(spec, run_dir)[0], spec


def restore_model(spec: RunSpec, run_dir: str | os.PathLike) -> tuple[AbstractSequenceModel, int]:
    """The newest readable checkpointed model of a run directory and its step. Reads only."""
    model, _, opt_state = build(spec)
    (model, _), _, _, step, _ = _restore(Path(run_dir), spec, (model, opt_state), move_damaged=False)
    return model, step


def _restore(run_dir: Path, spec: RunSpec, template: Any, *, move_damaged: bool):
    """(state, key, record, step, skipped) of the newest readable checkpoint; `skipped`: notes on
    unreadable newer ones (moved to `<dir>/damaged-checkpoints/` when `move_damaged`)."""
    directory = run_dir / "checkpoints"
    if not directory.is_dir() or not _checkpoint_steps(directory):
        raise RunError(f"{run_dir} has no checkpoint to load; train first (python train/run.py --out {run_dir})")
    skipped = []
    for step in sorted(_checkpoint_steps(directory), reverse=True):
        ckpt = Checkpointer(directory, create=False)
        try:
            state, key, record, _ = ckpt.restore(template, step=step)
            return state, key, record, step, skipped
        except UnreadableCheckpoint as err:
            note = f"checkpoint {directory / str(step)} cannot be read ({err})"
            if move_damaged:
                aside = run_dir / "damaged-checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(exist_ok=True)
                shutil.move(str(directory / str(step)), aside)
                note += f"; moved to {aside}"
            skipped.append(note)
        except ValueError as err:
            raise RunError(str(err)) from None
        finally:
            ckpt.close()
    raise RunError(f"no checkpoint of {run_dir} can be read: {'; '.join(skipped)}; start over with --fresh")


def _checkpoint_steps(directory: Path) -> list[int]:
    return [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]


# ---------------------------------------------------------------------------------------------------
# The run directory


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of `run_dir` (created if needed) for the duration of the block.

    Another process holding it → RunError naming its pid and host. The OS drops the lock when the
    holder dies, so a lock left by a killed run is simply taken.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunError(f"cannot write to --out {run_dir} ({err.strerror}); choose a writable directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunError(f"{run_dir} is in use by {holder}; wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)


_WRITTEN = ("config.json", "metrics.jsonl", "eval.json")
_WRITTEN_DIRS = {
    "checkpoints": re.compile(r"^\d+(\.orbax-checkpoint-tmp.*)?$|\.orbax-checkpoint-tmp"),
    "tensorboard": re.compile(r"^events\.out\.tfevents\."),
    "figures": re.compile(r"^(flow_.*\.(png|gif)|compose_.*\.png|loss\.png|flow_usage\.png|samples_.*\.png)$"),
}


def is_run_dir(run_dir: Path) -> bool:
    """Whether `run_dir` holds a config.json written by this package."""
    try:
        blob = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(blob, dict) and (MARKER in blob or {"method", "model", "preset"} <= set(blob))


def clear_run(run_dir: Path) -> list[Path]:
    """Delete what this package wrote in run directory `run_dir` (config, metrics, evaluation,
    checkpoints, events, its figures); anything else stays. Refuses a directory that is not a run."""
    if not run_dir.exists():
        return []
    if not is_run_dir(run_dir):
        if any(p.name != ".lock" for p in run_dir.iterdir()):
            raise RunError(
                f"--fresh refused: {run_dir} is not a run directory of eqx_ffvae (no config.json of a run) and is "
                "not empty; choose another --out"
            )
        return []
    removed = []
    for name, pattern in _WRITTEN_DIRS.items():
        folder = run_dir / name
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if pattern.search(entry.name):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry)
        if not any(folder.iterdir()):
            folder.rmdir()
    for name in _WRITTEN:
        if (run_dir / name).exists():
            (run_dir / name).unlink()
            removed.append(run_dir / name)
    return removed


def _check_same_run(spec: RunSpec, saved: RunSpec, run_dir: Path) -> None:
    saved_id, now = saved.identity(), spec.identity()
    diffs = [f for f in RunSpec.IDENTITY if saved_id[f] != now[f]]
    if not diffs:
        return
    detail = "; ".join(f"{f}: {saved_id[f]!r} there vs {now[f]!r} now" for f in diffs if f != "model")
    if "model" in diffs:
        changed = sorted(k for k in now["model"] if saved_id["model"].get(k) != now["model"][k])
        detail = "; ".join(filter(None, [detail, f"model fields {changed} differ"]))
    raise RunError(
        f"{run_dir} holds a checkpoint of another configuration ({detail}); rerun with that configuration, "
        "pass --fresh to start over there, or choose another --out"
    )


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl, skipping a partial (unparseable) last line."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise RunError(f"{path} line {i + 1} is not JSON; repair or remove the file") from None
    return records


def _cut_metrics(path: Path, last_step: int) -> None:
    """Keep the records up to `last_step` (a killed run may have logged past its checkpoint)."""
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))


# ---------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass(frozen=True)
class Started:
    """Training begins at step `start` of `total` (`resumed`: from a checkpoint); `notes`: what was
    noticed on the way (skipped unreadable checkpoints)."""

    start: int
    total: int
    resumed: bool
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The training step was traced and lowered in `trace_seconds` (Python; never cached) and compiled
    in `compile_seconds`; `from_cache`: that compilation was loaded from the persistent compilation
    cache (`compile_cache`)."""

    trace_seconds: float
    compile_seconds: float
    from_cache: bool = False

    @property
    def seconds(self) -> float:
        return self.trace_seconds + self.compile_seconds


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One training step: its number (1-based, as in metrics.jsonl), the loss terms, the rate."""

    step: int
    terms: dict[str, float]
    sequences_per_s: float


@dataclasses.dataclass(frozen=True)
class Saved:
    """Checkpoint `step` is being written to `path`, in the background: it is complete once the next save
    begins or the run ends (a run killed before then resumes from the checkpoint before)."""

    step: int
    path: Path


@dataclasses.dataclass(frozen=True)
class Stopped:
    """Training stopped early on request (`reason`, e.g. "SIGTERM") after saving step `step`."""

    step: int
    reason: str


Event = Started | Compiled | StepRecord | Saved | Stopped


FRAMES_ON = ("auto", "host", "device")


def frames_made_on_device(spec: RunSpec) -> bool:
    """Whether the training step makes its own frames from compact batches (see `RunSpec.frames_on`)."""
    return spec.frames_on in ("device", "auto")


STEP_INPUTS = ("digits", "frames", "k")
"""What the host ships to the training step of each sequence: the compact data (`data.device`) and k."""

_step_key = jax.jit(jr.fold_in)
"""The key of training step n, `fold_in(run key, n)`: the same bits as the eager call, a tenth of its cost."""

STEPS_IN_FLIGHT = 1
"""Training steps dispatched beyond the one whose terms the loop is reading: the host builds the next
batch and logs while the device works. A non-finite loss is reported this many steps late, never
after a checkpoint (each save reads every pending step first)."""


class TrainingRun:
    """Train (or resume) `spec` in `run_dir`: iterate to run the loop; `model` is the latest model.

    `model` is rebuilt from the loop's state when read; the next step donates its arrays, so read it
    between events (or take `local_copy`) rather than keep it across steps.

    Everything is checked before anything is written: the spec (at construction), the directory lock,
    the data files, an existing checkpoint against the spec. `fresh` first deletes what an earlier run
    wrote there. `should_stop()` is polled after every step: when it returns a reason, the step is
    saved and the loop ends with `Stopped`. `wrap_batches(iterator)` may wrap the data iterator (fault
    injection in tests). Multi-host: every process iterates; process 0 writes the logs.
    """

    def __init__(
        self,
        spec: RunSpec,
        run_dir: str | os.PathLike,
        *,
        fresh: bool = False,
        should_stop: Callable[[], str | None] = lambda: None,
        wrap_batches: Callable[[Iterator[dict]], Iterator[dict]] | None = None,
    ):
        self.spec, self.run_dir, self.fresh = spec, Path(run_dir), fresh
        self.should_stop, self.wrap_batches = should_stop, wrap_batches
        self._model: AbstractSequenceModel | None = None
        self._flat: FlatStep | None = None  # while the loop runs: the compiled step, and
        self._leaves: list | None = None  # the state it carries
        self.trained_steps = 0
        self.step = 0  # the step the model is at
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"--out {self.run_dir} is a file, not a directory; choose another --out")

    @property
    def model(self) -> AbstractSequenceModel | None:
        """The model at `step` (None before the run has built one)."""
        if self._leaves is not None:
            return self._flat.state(self._leaves)[0]
        return self._model

    def __iter__(self) -> Iterator[Event]:
        is_main = jax.process_index() == 0
        check_data(self.spec)  # before anything is written, even the lock
        lock = locked(self.run_dir) if is_main else contextlib.nullcontext()
        with lock:
            yield from self._run(is_main)

    def _run(self, is_main: bool) -> Iterator[Event]:
        spec, run_dir = self.spec, self.run_dir
        process_index, process_count = jax.process_index(), jax.process_count()
        if self.fresh and is_main:
            clear_run(run_dir)
        model, optimizer, opt_state = build(spec)
        mesh = make_mesh()
        if spec.batch_size % mesh.size:
            raise RunError(f"--batch-size {spec.batch_size} must be a multiple of the {mesh.size} devices")
        ckpt_dir = run_dir / "checkpoints"
        key, start, notes, data_state = train_key(spec), 0, (), None
        has_ckpt = ckpt_dir.is_dir() and bool(_checkpoint_steps(ckpt_dir))
        if has_ckpt:
            if (run_dir / "config.json").exists():
                _check_same_run(spec, read_spec(run_dir), run_dir)
            (model, opt_state), key, record, start, skipped = _restore(
                run_dir, spec, (model, opt_state), move_damaged=is_main
            )
            data_state, notes = record["data_state"][process_index], tuple(skipped)
        self._model, self.step = model, start
        if start >= spec.steps:
            yield Started(
                start, spec.steps, True, (*notes, f"already trained for {start} ≥ {spec.steps} steps; nothing to do")
            )
            return
        dataset = sequences(spec, grouped=spec.grouped, compact=frames_made_on_device(spec))
        iterator = data.batch_iterator(
            dataset, spec.batch_size, num_workers=spec.workers, process_index=process_index, process_count=process_count
        )
        if data_state is not None:
            iterator.set_state(data_state)
        if is_main:
            try:
                history = _provenance_history(run_dir)
                blob = {**spec.to_json(), "provenance": [*history, {"start_step": start, **provenance()}]}
                atomic_write(run_dir / "config.json", json.dumps(blob, indent=2))
            except OSError as err:
                raise RunError(
                    f"cannot write to --out {run_dir} ({err.strerror}); choose a writable directory"
                ) from None
            _cut_metrics(run_dir / "metrics.jsonl", start)
        yield Started(start, spec.steps, has_ckpt, notes)
        yield from self._loop(model, optimizer, opt_state, key, start, iterator, mesh, is_main)

    def _loop(self, model, optimizer, opt_state, key, start, iterator, mesh, is_main) -> Iterator[Event]:
        spec, run_dir = self.spec, self.run_dir
        process_count = jax.process_count()
        model, opt_state = replicate((model, opt_state), mesh)
        step_fn = make_step(
            optimizer,
            slice_size=spec.slice_size,
            mesh=mesh,
            matmul_precision=spec.matmul_precision,
            frames=functools.partial(device.frames, num_frames=spec.model.num_frames)
            if frames_made_on_device(spec)
            else None,
        )
        ckpt = Checkpointer(run_dir / "checkpoints", background=True)  # written while training goes on
        writer = training_writer(run_dir) if is_main else None
        metrics_file = open(run_dir / "metrics.jsonl", "a", buffering=1) if is_main else None
        batches = iterator if self.wrap_batches is None else self.wrap_batches(iterator)
        last_saved = start

        def save(step: int) -> Saved:
            nonlocal last_saved
            states = [iterator.get_state()]
            if process_count > 1:
                blob = np.frombuffer(json.dumps(states[0]).encode().ljust(4096), np.uint8)
                gathered = multihost_utils.process_allgather(blob)
                states = [json.loads(bytes(row).decode().strip()) for row in np.asarray(gathered)]
            ckpt.save(step, flat.state(leaves), key, {"data_state": states, "step": step})
            last_saved = step
            return Saved(step, ckpt.directory / str(step))

        pending: collections.deque = collections.deque()  # (step, terms on the device) not yet read
        last_read = time.perf_counter()

        def read(keep: int) -> Iterator[StepRecord]:
            """Read back the terms of all but the newest `keep` dispatched steps, oldest first: log
            them, and stop on a non-finite one (naming its step)."""
            nonlocal last_read
            while len(pending) > keep:
                number, device_terms = pending.popleft()
                terms = {name: float(v) for name, v in jax.device_get(device_terms).items()}
                now = time.perf_counter()
                rate, last_read = spec.batch_size / (now - last_read), now
                bad = [name for name, v in terms.items() if not math.isfinite(v)]
                if bad:
                    where = (
                        f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                        if last_saved
                        else "no checkpoint was saved"
                    )
                    raise NonFiniteLoss(
                        f"non-finite loss at step {number} in {', '.join(bad)} (loss={terms['loss']}); stopped, {where}"
                    )
                if is_main:
                    metrics_file.write(json.dumps({"step": number, **terms, "sequences_per_s": rate}) + "\n")
                    writer.add(
                        {f"train/{name}": value for name, value in {**terms, "sequences_per_s": rate}.items()}, number
                    )
                yield StepRecord(number, terms, rate)

        try:
            for step in range(start, spec.steps):
                batch = next(batches)
                host = with_step({name: v for name, v in batch.items() if name in STEP_INPUTS}, step)
                step_key = _step_key(key, step)
                if step == start:
                    before = compile_cache.hits()
                    flat = FlatStep(step_fn, model, opt_state, shard_batch(host, mesh), step_key)
                    leaves = flat.leaves(model, opt_state)
                    del model, opt_state  # from here the loop carries `leaves`
                    self._flat, self._leaves = flat, leaves
                    yield Compiled(flat.trace_s, flat.compile_s, compile_cache.hits() > before)
                    last_read = time.perf_counter()
                # Dispatched, not waited for: the compiled step returns at once (calling `step_fn`,
                # an `eqx.filter_jit`, would wait for it to finish), so the next batch is built
                # while it runs; its terms are read once the following step is on its way.
                # One process: the compiled step puts the host arrays on the mesh as it was compiled
                # for, which costs less than a `device_put` of them first.
                batch = host if process_count == 1 else shard_batch(host, mesh)
                leaves, _, terms = flat(leaves, batch, step_key)
                pending.append((step + 1, terms))
                self._leaves, self.trained_steps, self.step = leaves, self.trained_steps + 1, step + 1
                yield from read(keep=STEPS_IN_FLIGHT)
                done = step + 1
                reason = self.should_stop()
                if done % spec.checkpoint_every == 0 or done == spec.steps or reason:
                    yield from read(keep=0)  # nothing non-finite is ever saved
                    yield save(done)
                if reason:
                    yield Stopped(done, reason)
                    return
        finally:
            if is_main:
                metrics_file.close()
                writer.close()
                if last_saved == 0:
                    _cut_metrics(run_dir / "metrics.jsonl", 0)
            ckpt.close()


def train(spec: RunSpec, run_dir: str | os.PathLike, *, fresh: bool = False) -> AbstractSequenceModel:
    """Run `TrainingRun` to the end, silently; the final model."""
    run = TrainingRun(spec, run_dir, fresh=fresh)
    for _ in run:
        pass
    return run.model


# ---------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_run(spec: RunSpec, model: AbstractSequenceModel, run_dir: str | os.PathLike | None = None) -> dict:
    """Score `model` on the run's held-out sequences (docs/method.md §5); with `run_dir`, write its eval.json
    (atomically). Returns the result with `test_batches` and `shifts` left out."""
    result, _, _ = evaluate_with_batches(spec, model)
    if run_dir is not None:
        atomic_write(Path(run_dir) / "eval.json", json.dumps(result, indent=2))
    return result


def evaluate_with_batches(spec: RunSpec, model: AbstractSequenceModel) -> tuple[dict, list[dict], jax.Array]:
    """(result, the held-out batches scored, the fitted linear shifts): what figures need as well."""
    ev = spec.eval
    test = eval_batches(spec, "test", -(-ev.eval_sequences // ev.eval_batch_size))
    shifts = fit_linear_shifts(model, eval_batches(spec, "train", ev.shift_batches), len(spec.transforms))
    result = evaluate(
        model, test, shifts, transform_names=spec.transforms, key=jr.key(EVAL_SEED), num_samples=ev.ll_samples
    )
    result["dataset"] = spec.dataset
    result["model"] = spec.method
    return result, test, shifts


@eqx.filter_jit
def _validation_batch_loss(model, frames, ks, key, step):
    return model.batch_loss(frames, ks, key=key, step=step)


def validation_loss(spec: RunSpec, model: AbstractSequenceModel) -> dict:
    """The model's own training objective (`batch_loss`, at the run's final step for a scheduled one)
    on the first `spec.eval.eval_sequences` sequences of the validation split in the evaluation order
    (fixed seed; all of them when the split is smaller, as MNIST's 500), in batches of the evaluation
    batch size with fixed keys: {"validation_loss", "terms", "num_sequences"}. What `compare --lr-grid`
    ranks learning rates by; never a test metric. Needs a run with `validation_fraction` > 0. (A factor
    dataset's validation split is every tenth factor combination, 48,000 sequences for Shapes3D: the
    cap keeps it the size of the test set.)"""
    if not spec.validation_fraction:
        raise RunError(
            "this run has no validation split (validation_fraction 0); train it with --validation-fraction > 0"
        )
    ds = sequences(spec, split="validation", seed=EVAL_SEED, num_epochs=1)
    limit, size = spec.eval.eval_sequences, spec.eval.eval_batch_size
    batches = itertools.islice(data.batch_iterator(ds, size, drop_remainder=False), -(-limit // size))
    losses, terms, sizes = [], [], []
    for i, batch in enumerate(batches):
        take = min(len(batch["k"]), limit - sum(sizes))
        loss, batch_terms = _validation_batch_loss(
            model,
            jnp.asarray(batch["frames"][:take]),
            jnp.asarray(batch["k"][:take]),
            jr.fold_in(jr.key(EVAL_SEED), i),
            spec.steps,
        )
        losses.append(float(loss))
        terms.append({name: float(v) for name, v in batch_terms.items()})
        sizes.append(take)
    if not sizes:
        raise RunError(f"the validation split of {spec.dataset} is empty; raise --validation-fraction")
    w = np.asarray(sizes, np.float64) / sum(sizes)
    return {
        "validation_loss": float(np.dot(w, losses)),
        "terms": {name: float(np.dot(w, [t[name] for t in terms])) for name in terms[0]},
        "num_sequences": int(sum(sizes)),
    }


def local_copy(model: eqx.Module) -> eqx.Module:
    """This process's copy of a replicated model (multi-host arrays are not all addressable)."""
    if jax.process_count() == 1:
        return model
    return jax.tree.map(lambda x: x.addressable_data(0) if eqx.is_array(x) else x, model)
