"""The record store of a comparison: one (method, seed) run trained and evaluated, or reused from its
kept record (eval.json, config.json, metrics summary) when that was made for the same configuration;
one learning-rate grid point scored by its own validation loss.

A record is as safe as a run directory: a process claims it (`claim`, a lock beside it) before it
trains for it, so two comparisons writing one store never train the same (method, seed) twice; a
record that cannot be read, or was made for another configuration, is named in one line and moved
aside (`set_aside`), never deleted, before it is made again."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .. import methods
from ..runs import (
    NonFiniteLoss,
    RunError,
    RunSpec,
    atomic_write,
    evaluate_run,
    read_metrics,
    read_spec,
    restore_model,
    train,
    validation_loss,
)

Log = Callable[[str], None]


@contextlib.contextmanager
def claim(record: Path, *, wait: bool, log: Log = lambda line: None) -> Iterator[bool]:
    """Hold the claim on `record` (a kept record's folder or file; the lock is `.<name>.lock` beside it)
    for the block: yields True once held. Held by another process: with `wait`, says so through `log`
    and blocks until it is free; without, yields False at once (the caller comes back to it later).
    The OS drops a claim when its holder dies, so a claim left by a killed comparison is simply taken."""
    record.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(record.parent / f".{record.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                yield False
                return
            log(f"{record} is being made by {holder}: waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield True
    finally:
        os.close(fd)


def set_aside(record: Path, why: str, log: Log, detail: str = "") -> Path:
    """Move `record` (a folder or a file) to `<name>.<why>-<UTC time>` beside it and say so in one line
    (with `detail`, what is wrong); nothing is deleted."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = record.with_name(f"{record.name}.{why}-{stamp}")
    os.replace(record, aside)
    what = "is damaged" if why == "damaged" else "was made for another configuration"
    log(f"{record} {what}{f' ({detail[:120]})' if detail else ''}: moved to {aside.name}, made again")
    return aside


def _read_record(run_dir: Path, spec: RunSpec) -> tuple[str, dict | None, str]:
    """(state, eval.json, what is wrong) of a record folder: "absent" (no eval.json: never finished),
    "same" (made by training this configuration to the end), "other" (whole, another configuration or
    step count) or "damaged" (eval.json or config.json unreadable)."""
    path = run_dir / "eval.json"
    if not path.exists():
        return "absent", None, ""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return "damaged", None, f"eval.json: {err}"
    try:
        saved = read_spec(run_dir)
    except (OSError, ValueError, RunError) as err:
        return "damaged", None, f"config.json: {err}"
    if not isinstance(result, dict) or "transformations" not in result:
        return "damaged", None, "eval.json holds no evaluation"
    same = saved.identity() == spec.identity() and (saved.steps, saved.eval) == (spec.steps, spec.eval)
    return ("same" if same and result.get("trained_steps") == spec.steps else "other"), result, ""


def training_seconds(records: list[dict], batch_size: int) -> float:
    """The training loop's wall time over every invocation that wrote `records` (metrics.jsonl):
    each step's `sequences_per_s` is `batch_size` over the wall time since the previous step was read,
    so the sum of `batch_size / sequences_per_s` covers stepping, data and checkpoints, and leaves out
    each invocation's compilation and the evaluation. A run resumed across sessions counts all its parts."""
    return float(sum(batch_size / r["sequences_per_s"] for r in records if r.get("sequences_per_s")))


def _metrics_summary(run_dir: Path, batch_size: int, last: int = 100) -> dict:
    """The training record of a run in brief: the final step's terms, each term's mean over the last
    `last` steps and the training loop's wall time (`training_seconds`), from metrics.jsonl."""
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        return {}
    tail = records[-last:]
    names = [k for k in tail[-1] if k != "step"]
    return {
        "final_step": tail[-1]["step"],
        "training_seconds": training_seconds(records, batch_size),
        "final": {k: tail[-1][k] for k in names},
        f"mean_of_last_{len(tail)}": {k: float(np.mean([r[k] for r in tail if k in r])) for k in names},
    }


def kept_path(results_dir: Path, name: str, seed: int) -> Path:
    return results_dir / "runs" / name / f"seed{seed}"


def _keep(run_dir: Path, kept: Path, result: dict, batch_size: int) -> None:
    """A finished run's small record under `kept`: eval.json, config.json, metrics_summary.json (no
    checkpoints), each written atomically; eval.json last, so its presence means the record is whole."""
    kept.mkdir(parents=True, exist_ok=True)
    atomic_write(kept / "config.json", (run_dir / "config.json").read_text())
    atomic_write(kept / "metrics_summary.json", json.dumps(_metrics_summary(run_dir, batch_size), indent=2))
    atomic_write(kept / "eval.json", json.dumps(result, indent=2))


def one_run(spec: RunSpec, run_dir: Path, kept: Path | None = None, log: Log = lambda line: None) -> tuple[dict, bool]:
    """Evaluate `spec`'s run (training it first, or resuming it in `run_dir`), or reuse its record: the
    kept one, else the run directory's eval.json. A kept record that is damaged or made for another
    configuration is moved aside (`set_aside`) before the run is made again. (result, reused). The
    caller holds the record's `claim`."""
    if kept is not None and kept.exists():
        state, result, wrong = _read_record(kept, spec)
        if state == "same":
            return result, True
        if state == "damaged":
            set_aside(kept, "damaged", log, wrong)
        elif state == "other":
            set_aside(kept, "superseded", log)
    state, result, _ = _read_record(run_dir, spec)
    if state == "same":
        if kept is not None:
            _keep(run_dir, kept, result, spec.batch_size)
        return result, True
    tic = time.perf_counter()
    train(spec, run_dir)
    model, last = restore_model(spec, run_dir)
    if last != spec.steps:
        raise RunError(f"{run_dir} stopped at step {last} of {spec.steps}; rerun compare to resume it")
    result = evaluate_run(spec, model)
    result["trained_steps"] = spec.steps
    result["seconds"] = time.perf_counter() - tic  # this invocation's training (or resumed part) + eval
    result["training_seconds"] = training_seconds(read_metrics(run_dir / "metrics.jsonl"), spec.batch_size)
    atomic_write(run_dir / "eval.json", json.dumps(result, indent=2))
    if kept is not None:
        _keep(run_dir, kept, result, spec.batch_size)
    return result, False


def lr_name(learning_rate: float) -> str:
    return f"lr{learning_rate:g}"


def same_identity(stored: dict | None, spec: RunSpec) -> bool:
    """Whether a stored identity (a grid record's) is `spec`'s, with the model fields it predates at
    their defaults: a config field added later with a default that keeps the old behaviour does not
    make a committed record stale."""
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        return False
    try:
        model = methods.make_config(stored["method"], **stored["model"])
    except (KeyError, TypeError, ValueError):
        return False
    return {**stored, "model": json.loads(json.dumps(dataclasses.asdict(model)))} == spec.identity()


def grid_point(spec: RunSpec, run_dir: Path, kept: Path | None, log: Log = lambda line: None) -> tuple[dict, bool]:
    """Train `spec` (seed 0 at one learning rate of the grid) and score it by its own validation loss
    (`runs.validation_loss`); a run that stops on a non-finite loss scores +inf ("failed" says why).
    The record (with the run's config and metrics summary) is reused from `kept` or `run_dir` when it
    was made for the same configuration; a kept one that cannot be read, or was made for another, is
    moved aside (`set_aside`) first. The caller holds the record's `claim`."""
    for path in (kept, run_dir / "validation.json"):
        if path is not None and path.exists():
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                if path == kept:
                    set_aside(kept, "damaged", log, str(err))
                continue
            if same_identity(record.get("identity"), spec) and record.get("steps") == spec.steps:
                if kept is not None and path != kept:
                    atomic_write(kept, json.dumps(record, indent=2))
                return record, True
            if path == kept:
                set_aside(kept, "superseded", log)
    record: dict = {"learning_rate": spec.learning_rate, "steps": spec.steps, "identity": spec.identity()}
    tic = time.perf_counter()
    try:
        train(spec, run_dir)
        model, last = restore_model(spec, run_dir)
        if last != spec.steps:
            raise RunError(f"{run_dir} stopped at step {last} of {spec.steps}; rerun compare to resume it")
        record.update(validation_loss(spec, model))
    except NonFiniteLoss as err:
        record.update(validation_loss=math.inf, failed=str(err))
    record["seconds"] = time.perf_counter() - tic
    record["metrics_summary"] = _metrics_summary(run_dir, spec.batch_size)
    record["validation_loss"] = float(record["validation_loss"])
    for path in (run_dir / "validation.json", kept):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(record, indent=2))
    return record, False


def choose_learning_rate(records: Sequence[dict]) -> float:
    """The grid's learning rate of lowest validation loss (ties: the smaller rate); an error if every
    point failed."""
    finite = [r for r in records if math.isfinite(r["validation_loss"])]
    if not finite:
        reasons = "; ".join(f"{r['learning_rate']:g}: {r.get('failed', 'no finite loss')}" for r in records)
        raise RunError(f"every learning rate of the grid failed ({reasons}); try smaller rates with --lr-grid")
    return min(finite, key=lambda r: (r["validation_loss"], r["learning_rate"]))["learning_rate"]
