"""A training run as a library object: its spec, its directory, the loop, and loading it back.

Modules: `spec` (RunSpec, resolve, RunError), `inputs` (data and fresh model), `directory` (lock,
atomic writes, clearing, metrics, restoring), `loop` (TrainingRun and its events), `scoring`
(eval.json, validation loss). Everything public is importable from `eqx_ffvae.runs`.

    spec = runs.resolve(preset="quick", steps=200, seed=0)       # a validated RunSpec
    run = runs.TrainingRun(spec, "runs/mine")                     # locks the directory
    for event in run: ...                                          # StepRecord, Saved, ... (no printing)
    model, spec = runs.load_run("runs/mine")                       # in a notebook or another program

Guarantees of a run directory (docs/guide/training.md, "Runs and faults"):
* one process at a time: an exclusive `fcntl` lock on `<dir>/.lock` for the life of a run, released
  by the OS if the process dies (a stale lock is simply taken);
* nothing is written before the spec, the data files and the checkpoint (if any) have been checked;
  config.json is written atomically and describes what the checkpoints hold;
* `fresh=True` deletes only in a directory that is a run of this package, and only what it wrote;
* resume survives damage: an unreadable newest checkpoint is moved aside (never deleted) and the
  newest readable one is used; metrics.jsonl is cut back to the resumed step, tolerating a partial
  last line; a run that never checkpointed leaves no records behind.
"""

from .directory import (
    atomic_write,
    clear_run,
    is_run_dir,
    load_run,
    locked,
    read_metrics,
    read_spec,
    restore_model,
)
from .inputs import build, check_data, eval_batches, has_probes, sequences, train_key
from .loop import (
    STEP_INPUTS,
    STEPS_IN_FLIGHT,
    Compiled,
    Event,
    Saved,
    Started,
    StepRecord,
    Stopped,
    TrainingRun,
    train,
)
from .scoring import evaluate_run, evaluate_with_batches, local_copy, validation_loss
from .spec import (
    EVAL_SEED,
    FRAMES_ON,
    MARKER,
    EvalSettings,
    NonFiniteLoss,
    RunError,
    RunSpec,
    frames_made_on_device,
    resolve,
)

__all__ = [
    "EVAL_SEED",
    "FRAMES_ON",
    "MARKER",
    "STEPS_IN_FLIGHT",
    "STEP_INPUTS",
    "Compiled",
    "EvalSettings",
    "Event",
    "NonFiniteLoss",
    "RunError",
    "RunSpec",
    "Saved",
    "Started",
    "StepRecord",
    "Stopped",
    "TrainingRun",
    "atomic_write",
    "build",
    "check_data",
    "clear_run",
    "eval_batches",
    "evaluate_run",
    "evaluate_with_batches",
    "frames_made_on_device",
    "has_probes",
    "is_run_dir",
    "load_run",
    "local_copy",
    "locked",
    "read_metrics",
    "read_spec",
    "resolve",
    "restore_model",
    "sequences",
    "train",
    "train_key",
    "validation_loss",
]
