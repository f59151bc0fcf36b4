"""The training loop as an iterator of events (`TrainingRun`): no printing, resumable, safe against
faults (docs/guide/training.md, "Runs and faults")."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
from jax.experimental import multihost_utils

from .. import compile_cache, data
from ..checkpoint import Checkpointer
from ..data import device
from ..interfaces import AbstractSequenceModel
from ..provenance import provenance
from ..tensorboard import training_writer
from ..training import FlatStep, make_mesh, make_step, replicate, shard_batch, with_step
from .directory import (
    _check_same_run,
    _checkpoint_steps,
    _cut_metrics,
    _provenance_history,
    _restore,
    atomic_write,
    clear_run,
    locked,
    read_spec,
)
from .inputs import build, check_data, sequences, train_key
from .spec import NonFiniteLoss, RunError, RunSpec, frames_made_on_device


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


STEP_INPUTS = ("digits", "values", "frames", "k")
"""What the host ships to the training step of each sequence: the compact data (`data.device`) and k
(never the active sets of composed sequences, which are for evaluation only)."""

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
            make_frames=functools.partial(device.frames, num_frames=spec.model.num_frames)
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
