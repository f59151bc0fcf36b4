"""The run directory: its lock, atomic writes, `--fresh` clearing (only what this package wrote),
metrics.jsonl, config.json and restoring the newest readable checkpoint (damaged ones moved aside)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpointer, UnreadableCheckpoint
from ..interfaces import AbstractSequenceModel
from .inputs import build
from .spec import MARKER, RunError, RunSpec


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
