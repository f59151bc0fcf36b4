"""Evaluating a run and drawing it: eval.json, the printed table, the figures and TensorBoard."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..evaluation import format_table
from ..interfaces import AbstractSequenceModel, AbstractSparseControlModel
from ..runs import RunSpec, atomic_write, evaluate_with_batches, locked
from ..tensorboard import log_evaluation
from .figures import draw_decomposition, draw_figures, matched_flows


def evaluate_and_draw(
    spec: RunSpec,
    model: AbstractSequenceModel,
    run_dir: str | os.PathLike,
    step: int,
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Score a run and draw it: eval.json (atomically, under the run's lock), its table (to `log`), the
    figures, and all of them in TensorBoard at `step`. What `train` and `eval` do after training."""
    with locked(Path(run_dir)):
        tic = time.perf_counter()
        result, test, shifts = evaluate_with_batches(spec, model)
        atomic_write(Path(run_dir) / "eval.json", json.dumps(result, indent=2))
        log(format_table(result))
        evaluated = time.perf_counter()
        draw_figures(spec, model, test, Path(run_dir) / "figures", shifts, matched_flows(result, len(spec.transforms)))
        if isinstance(model, AbstractSparseControlModel) and "sparse_controls" in result:
            draw_decomposition(spec, model, Path(run_dir) / "figures", result["sparse_controls"]["matching"])
        log(f"evaluated in {evaluated - tic:.0f} s, figures in {time.perf_counter() - evaluated:.0f} s")
        log_evaluation(run_dir, step, result, Path(run_dir) / "figures")
    return result
