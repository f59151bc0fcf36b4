"""A run's specification: `RunSpec` (saved as config.json), the evaluation settings, and `resolve`
(a preset with overrides → a validated spec); the run's expected failures (`RunError`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from .. import data, methods
from .._version import __version__
from ..interfaces import AbstractFlowInferenceModel
from ..layout import default_slice_size
from ..nn import image_size_problem
from ..presets import PRESETS
from ..training import MATMUL_PRECISIONS

EVAL_SEED = 1234
MARKER = "eqx_ffvae"
"""config.json's key that marks a directory as a run of this package."""


class RunError(Exception):
    """An expected failure: its message is one line saying what is wrong and how to fix it."""


class NonFiniteLoss(RunError):
    """Training stopped on a non-finite loss (a learning-rate grid scores such a run as failed)."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a run is scored: held-out sequences, their batch size, importance samples per frame, the
    sequences whose likelihood is estimated (the first `ll_sequences`; None: all), the estimator's
    drift check (`drift_samples` draws per frame on the first `drift_sequences` of them; 0: none) and
    training batches used to fit the best linear shift (`evaluation.evaluate`)."""

    eval_sequences: int = 600
    eval_batch_size: int = 50
    ll_samples: int = 100
    shift_batches: int = 20
    ll_sequences: int | None = None
    drift_samples: int = 0
    drift_sequences: int = 20

    def __post_init__(self):
        for name in ("eval_sequences", "eval_batch_size", "ll_samples", "shift_batches", "drift_sequences"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RunError(f"--{name.replace('_', '-')} must be an integer ≥ 1, got {value!r}")
        if self.ll_sequences is not None and not (
            isinstance(self.ll_sequences, int) and 1 <= self.ll_sequences <= self.eval_sequences
        ):
            raise RunError(
                f"--ll-sequences must be an integer in [1, --eval-sequences = {self.eval_sequences}], "
                f"got {self.ll_sequences!r}"
            )
        if not isinstance(self.drift_samples, int) or (self.drift_samples and self.drift_samples <= self.ll_samples):
            raise RunError(
                f"--drift-samples must be 0 (no drift check) or an integer above --ll-samples = {self.ll_samples}, "
                f"got {self.drift_samples!r}"
            )
        if self.drift_samples and self.drift_sequences > (self.ll_sequences or self.eval_sequences):
            raise RunError(
                f"the drift check's {self.drift_sequences} sequences exceed the {self.ll_sequences or self.eval_sequences} "
                "whose likelihood is estimated; lower drift_sequences or raise --ll-sequences"
            )


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The resolved, validated configuration of a run, saved as config.json.

    `model` is the method's config dataclass (`methods.make_config`); `slice_size` lays the training
    step out in memory and does not change its numbers, so a run may resume with another (None: the
    backend's default, `layout.default_slice_size`; `resolve` records the value it picks).
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
    slice_size: int | None = None
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
        if self.slice_size is not None:
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
    method: str | None = None,
    dataset: str | None = None,
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
    ll_sequences: int | None = None,
    drift_samples: int | None = None,
    factor_sizes: tuple[int, ...] | None = None,
    matmul_precision: str = "float32",
    validation_fraction: float | None = None,
    frames_on: str = "auto",
    notes: list[str] | None = None,
    **model_fields: Any,
) -> RunSpec:
    """The RunSpec of preset `preset` with the given overrides (None: the preset's value).

    `method` is a registered method's name (`methods.METHODS`; the command line's --model); the spec's
    `model` field is that method's config. `dataset` replaces the preset's: a name of `data.DATASETS`,
    a user's sequences (`data.register_sequences`) or a file's (`data.file_dataset(path)`, the command
    line's --data); the preset then gives the model's sizes and the training settings.

    `model_fields` override the method's config (latent_dim, width, potential_width, laplacian,
    num_frames, …); shared settings a method's config does not have (a VAE's potential width) are not
    applied to it, but a name no method has is an error. Notes about choices made (the offline
    dataset used without a data_dir) are appended to `notes`.
    """
    if preset not in PRESETS:
        raise RunError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    chosen_method = methods.METHODS.get(method or p.method)
    if dataset is None and p.dataset == "mnist" and chosen_method is not None and chosen_method.mnist_data:
        dataset = chosen_method.mnist_data
        if notes is not None:
            notes.append(
                f"--model {method}: training on {dataset} ({data.dataset_info(dataset).about}); "
                "--dataset mnist-double for two at once"
            )
    dataset = p.dataset if dataset is None else dataset
    try:
        info = data.dataset_info(dataset)
    except ValueError as err:  # a user's file that cannot be used (data.DataError), or an unknown name
        raise RunError(str(err)) from None
    if info.source == "arrays" and data_dir is not None:
        raise RunError(f"--data-dir is for the built-in datasets; {dataset} is a user's sequences: drop --data-dir")
    problem = image_size_problem(*info.image_shape[1:])
    if problem:
        raise RunError(f"{dataset}: {problem}; resize the frames")
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
            f"preset {preset} needs --data-dir pointing at the {dataset} data ({info.about}; see docs/guide/data.md)"
        )
    if data_dir is not None:
        path = Path(data_dir)
        if not path.exists():
            raise RunError(f"--data-dir {path} does not exist; pass the folder that holds the {dataset} files")
        if info.source in ("mnist", "composition", "png-folder") and not path.is_dir():
            raise RunError(f"--data-dir {path} is a file; pass the folder that holds the {dataset} files")
        data_dir = str(path.resolve())
    method = method or p.method
    try:
        chosen = methods.get_method(method)
    except ValueError as err:
        raise RunError(f"--model: {err}") from None
    if not info.labelled and not _trains_unlabelled(chosen):
        usable = [name for name, m in methods.METHODS.items() if _trains_unlabelled(m)]
        raise RunError(
            f"--model {method} needs to know which sequences share a transformation, and {dataset} has no labels k; "
            f"train a method that infers each sequence's transformation ({', '.join(usable)}), or add k to the data"
        )
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
    scored = pick(eval_sequences, p.eval_sequences)
    if info.source == "arrays":
        _check_split_sizes(
            dataset, pick(batch_size, p.batch_size), float(pick(validation_fraction, p.validation_fraction))
        )
    with_likelihood = _capped(pick(ll_sequences, p.ll_sequences), scored)
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
            eval_sequences=scored,
            eval_batch_size=p.eval_batch_size,
            ll_samples=pick(ll_samples, p.ll_samples),
            shift_batches=p.shift_batches,
            ll_sequences=with_likelihood,
            drift_samples=pick(drift_samples, p.drift_samples),
            drift_sequences=min(p.drift_sequences, with_likelihood or scored),
        ),
        factor_sizes=None if factor_sizes is None else tuple(factor_sizes),
        matmul_precision=matmul_precision,
        slice_size=pick(slice_size, default_slice_size(pick(batch_size, p.batch_size))),
        validation_fraction=float(pick(validation_fraction, p.validation_fraction)),
        frames_on=frames_on,
    )


def _trains_unlabelled(method: methods.Method) -> bool:
    """Whether a method trains on sequences without k: it infers each one's transformation from the
    sequence alone (weak supervision; group supervision needs to know which sequences share one)."""
    return method.supervision in ("weak", "none") and issubclass(method.model_cls, AbstractFlowInferenceModel)


def _check_split_sizes(dataset: str, batch_size: int, validation_fraction: float) -> None:
    """A user's sequences must fill a training batch and leave held-out sequences to score."""
    n = len(data.sequence_arrays(dataset))
    sizes = {}
    for split in ("train", "test") + (("validation",) if validation_fraction else ()):
        try:
            sizes[split] = len(data.split_indices(n, split, validation_fraction=validation_fraction))
        except ValueError as err:
            raise RunError(f"--validation-fraction: {err}") from None
    if sizes["train"] < batch_size:
        raise RunError(
            f"{dataset} has {n} sequences, {sizes['train']} of them for training (the rest held out), fewer than "
            f"--batch-size {batch_size}; lower --batch-size to at most {sizes['train']} or add sequences"
        )
    if n < 2 or sizes.get("validation", 1) < 1:
        raise RunError(f"{dataset} has {n} sequences: too few to hold out test (and validation) sequences")


def _capped(ll_sequences: int | None, eval_sequences: int) -> int | None:
    """The preset's likelihood sequences within the scored ones (None, all, when it asks for as many or more)."""
    return None if ll_sequences is None or ll_sequences >= eval_sequences else ll_sequences


FRAMES_ON = ("auto", "host", "device")


def frames_made_on_device(spec: RunSpec) -> bool:
    """Whether the training step makes its own frames from compact batches (see `RunSpec.frames_on`)."""
    return spec.frames_on in ("device", "auto")
