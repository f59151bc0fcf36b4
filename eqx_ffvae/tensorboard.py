"""TensorBoard logging of a run (`tensorboardX` writes the event files): the training terms per step,
the evaluation's metrics and its figures at the step evaluated.

    tensorboard --logdir runs/<run>/tensorboard
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboardX import FileWriter, SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary

__all__ = ["SummaryWriter", "TrainingWriter", "eval_scalars", "log_evaluation", "tag", "training_writer"]


def tag(name: str) -> str:
    """`name` as TensorBoard keeps it: characters outside [A-Za-z0-9_./-] become `_` (the writer would
    rename them with a warning otherwise), e.g. `scale+rotation` → `scale_rotation`."""
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


class TrainingWriter:
    """A run's training scalars in `<run_dir>/tensorboard/events.out.tfevents.*`, every scalar of a step
    in one event: `SummaryWriter.add_scalar` makes an event per scalar, each pickled through a
    process queue to the writing thread, host work the training step shares 2 cores with."""

    def __init__(self, run_dir: str | os.PathLike):
        self._writer = FileWriter(str(Path(run_dir) / "tensorboard"))

    def add(self, scalars: dict[str, float], step: int) -> None:
        """`scalars` (name → value, names through `tag`) at training step `step`."""
        values = [Summary.Value(tag=tag(name), simple_value=value) for name, value in scalars.items()]
        self._writer.add_summary(Summary(value=values), step)

    def close(self) -> None:
        """Write what is queued and close the file."""
        self._writer.close()


def training_writer(run_dir: str | os.PathLike) -> TrainingWriter:
    """The writer of a run's training scalars (`TrainingWriter`)."""
    return TrainingWriter(run_dir)


def eval_scalars(result: dict) -> dict[str, float]:
    """Every scalar of an eval.json (`evaluation.evaluate`'s result) as a TensorBoard tag:
    `eval/<transformation>/<metric>`, `eval/composition/<pair>/<probe>`, `eval/flows/<flow>/<metric>`,
    `eval/<metric>` for the overall numbers, each through `tag`. Per-frame lists and per-sequence
    records are left out."""
    out: dict[str, float] = {}

    def put(prefix: str, blob: dict) -> None:
        for name, value in blob.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out[tag(f"{prefix}/{name}")] = float(value)

    put("eval", result)
    for name, entry in result.get("transformations", {}).items():
        put(f"eval/{name}", entry)
    for pair, entry in result.get("equivariance_error_composition", {}).items():
        put(f"eval/composition/{pair}", entry)
    for flow, entry in result.get("flows", {}).items():
        put(f"eval/flows/{flow}", {k: v for k, v in entry.items() if v is not None})
    return out


def _pngs(figure_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    for path in sorted(figure_dir.glob("*.png")):
        with Image.open(path) as image:
            yield path.stem, np.asarray(image.convert("RGB"))


def log_evaluation(run_dir: str | os.PathLike, step: int, result: dict, figure_dir: str | os.PathLike | None) -> None:
    """Append an evaluation to the run's TensorBoard events at `step`: `eval_scalars(result)` and every
    PNG of `figure_dir` as an image (`figures/<name>`, through `tag`)."""
    with SummaryWriter(str(Path(run_dir) / "tensorboard")) as writer:
        for name, value in eval_scalars(result).items():
            writer.add_scalar(name, value, step)
        if figure_dir is not None and Path(figure_dir).is_dir():
            for name, pixels in _pngs(Path(figure_dir)):
                writer.add_image(tag(f"figures/{name}"), pixels, step, dataformats="HWC")
