"""The training job: run directory, resume, signals, progress, logging and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
from tensorboard import SummaryWriter
from tqdm import tqdm

import eqx_ffvae as ff
from eqx_ffvae import data
from eqx_ffvae.checkpoint import Checkpointer
from eqx_ffvae.training import (
    compile_step,
    init_opt_state,
    make_mesh,
    make_optimizer,
    make_step,
    replicate,
    shard_batch,
)

INJECT_NAN_ENV = "EQX_FFVAE_INJECT_NAN_AT_STEP"


class RunError(Exception):
    """An expected failure: its message is one line saying what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The resolved configuration of a run, saved as config.json."""

    preset: str
    dataset: str
    data_dir: str | None
    seed: int
    steps: int
    batch_size: int
    learning_rate: float
    checkpoint_every: int
    workers: int
    model: dict
    eval: dict
    factor_sizes: list[int] | None = None
    method: str = "ffvae"
    matmul_precision: str = "float32"

    # Fields a resumed run must share with the checkpoint it continues.
    IDENTITY = ("method", "dataset", "data_dir", "factor_sizes", "seed", "batch_size", "learning_rate", "model")
    # Model fields that only lay the computation out (the same loss, summed in another order): a run
    # may resume, or be reused by `compare`, with other values.
    LAYOUT = ("slice_size",)

    def model_config(self):
        return ff.methods.make_config(self.method, **self.model)

    @property
    def weak(self) -> bool:
        """k is not observed: the model infers it (weak or group supervision)."""
        return bool(self.model.get("weakly_supervised", False) or self.model.get("group_supervised", False))

    @property
    def group(self) -> bool:
        """Group supervision: the sampler puts one transformation in each batch."""
        return bool(self.model.get("group_supervised", False))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The IDENTITY fields as JSON values, the model's without its LAYOUT fields."""
        blob = json.loads(json.dumps(self.to_json()))
        blob["model"] = {k: v for k, v in blob["model"].items() if k not in self.LAYOUT}
        return {f: blob[f] for f in self.IDENTITY}

    @classmethod
    def from_json(cls, blob: dict) -> RunSpec:
        return cls(**blob)


def build(spec: RunSpec):
    """Model, optimiser and optimiser state of a fresh run (keys from the seed, by role)."""
    model_key, _, _ = jr.split(jr.key(spec.seed), 3)
    model = ff.methods.make_model(spec.method, spec.model_config(), key=model_key)
    optimizer = make_optimizer(spec.learning_rate)
    opt_state = init_opt_state(model, optimizer)
    return model, optimizer, opt_state


def train_key(spec: RunSpec) -> jax.Array:
    return jr.split(jr.key(spec.seed), 3)[2]


def restore_model(spec: RunSpec, run_dir: Path):
    """The newest checkpointed model of a run directory."""
    model, _, opt_state = build(spec)
    ckpt = Checkpointer(run_dir / "checkpoints")
    if ckpt.latest_step() is None:
        raise RunError(f"{run_dir} has no checkpoint to load; train first (python train/run.py --out {run_dir})")
    (model, _), _, _, step = ckpt.restore((model, opt_state))
    ckpt.close()
    return model, step


def _check_same_run(spec: RunSpec, run_dir: Path) -> None:
    saved = RunSpec.from_json(json.loads((run_dir / "config.json").read_text())).identity()
    now = spec.identity()
    diffs = [f for f in RunSpec.IDENTITY if saved[f] != now[f]]
    if diffs:
        detail = "; ".join(f"{f}: {saved.get(f)!r} there vs {now[f]!r} now" for f in diffs if f != "model")
        if "model" in diffs:
            changed = [k for k in now["model"] if saved["model"].get(k) != now["model"][k]]
            detail = "; ".join(filter(None, [detail, f"model fields {changed} differ"]))
        raise RunError(
            f"{run_dir} holds a checkpoint of another configuration ({detail}); "
            "pass --fresh to start over there, or choose another --out"
        )


def _prepare_run_dir(spec: RunSpec, run_dir: Path, fresh: bool, is_main: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} is a file, not a directory; choose another --out")
    if fresh and is_main:
        for name in ("checkpoints", "metrics.jsonl", "tensorboard", "eval.json", "figures"):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    has_ckpt = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    if has_ckpt and (run_dir / "config.json").exists():
        _check_same_run(spec, run_dir)
    if is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(spec.to_json(), indent=2))
        except OSError as err:
            raise RunError(f"cannot write to --out {run_dir} ({err.strerror}); choose a writable directory") from None


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past the checkpoint we resume from (a killed run may have logged beyond it)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def train_dataset(
    spec: RunSpec, *, split: str = "train", seed: int | None = None, num_epochs: int | None = None, grouped=False
):
    """The run's sequences; `grouped`: a group-supervised run's training batches (one k per batch)."""
    try:
        return data.sequence_dataset(
            spec.dataset,
            split=split,
            seed=spec.seed if seed is None else seed,
            data_dir=spec.data_dir,
            num_epochs=num_epochs,
            num_frames=spec.model["num_frames"],
            factor_sizes=None if spec.factor_sizes is None else tuple(spec.factor_sizes),
            group_size=spec.batch_size if grouped else None,
        )
    except (FileNotFoundError, ValueError) as err:
        raise RunError(str(err).splitlines()[0]) from None


def train(spec: RunSpec, run_dir: Path, *, fresh: bool = False) -> eqx.Module:
    """Train (or resume) the run in `run_dir`; returns the final model."""
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0
    dataset = train_dataset(spec, grouped=spec.group)
    _prepare_run_dir(spec, run_dir, fresh, is_main)
    model, optimizer, opt_state = build(spec)
    mesh = make_mesh()
    if spec.batch_size % mesh.size:
        raise RunError(f"--batch-size {spec.batch_size} must be a multiple of the {mesh.size} devices")
    model, opt_state = replicate((model, opt_state), mesh)
    iterator = data.batch_iterator(
        dataset, spec.batch_size, num_workers=spec.workers, process_index=process_index, process_count=process_count
    )
    ckpt = Checkpointer(run_dir / "checkpoints")
    key, start = train_key(spec), 0
    if ckpt.latest_step() is not None:
        (model, opt_state), key, record, start = ckpt.restore((model, opt_state))
        iterator.set_state(record["data_state"][process_index])
        if is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", start)
            print(f"resuming {run_dir} from step {start} (checkpoint {ckpt.directory / str(start)})")
    if start >= spec.steps:
        print(f"{run_dir} already trained for {start} ≥ {spec.steps} steps; nothing to do")
        ckpt.close()
        return model

    step_fn = make_step(optimizer, weak=spec.weak, mesh=mesh, matmul_precision=spec.matmul_precision)
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    inject = int(os.environ.get(INJECT_NAN_ENV, "-1"))
    writer = SummaryWriter(run_dir / "tensorboard") if is_main else None
    metrics_file = open(run_dir / "metrics.jsonl", "a", buffering=1) if is_main else None
    last_saved = start

    def save(step: int) -> None:
        nonlocal last_saved
        states = [iterator.get_state()]
        if process_count > 1:
            from jax.experimental import multihost_utils

            blob = np.frombuffer(json.dumps(states[0]).encode().ljust(4096), np.uint8)
            gathered = multihost_utils.process_allgather(blob)
            states = [json.loads(bytes(row).decode().strip()) for row in np.asarray(gathered)]
        ckpt.save(step, (model, opt_state), key, {"data_state": states, "step": step})
        last_saved = step

    bar = tqdm(total=spec.steps, initial=start, disable=not is_main, desc="train", dynamic_ncols=True)
    try:
        for step in range(start, spec.steps):
            tic = time.perf_counter()
            batch = next(iterator)
            host = {"frames": batch["frames"], "k": batch["k"]}
            if spec.group:
                host["step"] = np.full(batch["k"].shape, step, np.int32)
            if step == inject:
                host["frames"] = np.full_like(host["frames"], np.nan)
            args = (model, opt_state, shard_batch(host, mesh), jr.fold_in(key, step))
            if step == start:
                bar.write(f"compiled the training step in {compile_step(step_fn, *args)[1]:.1f} s")
            model, opt_state, loss, terms = step_fn(*args)
            terms = {name: float(v) for name, v in jax.device_get(terms).items()}
            rate = spec.batch_size / (time.perf_counter() - tic)
            bad = [name for name, v in terms.items() if not math.isfinite(v)]
            if bad:
                raise RunError(
                    f"non-finite loss at step {step} in {', '.join(bad)} (loss={terms['loss']}); stopped, the last "
                    f"good checkpoint is step {last_saved} in {ckpt.directory}"
                )
            if is_main:
                record = {"step": step + 1, **terms, "sequences_per_s": rate}
                metrics_file.write(json.dumps(record) + "\n")
                writer.scalars(step + 1, {k: v for k, v in record.items() if k != "step"})
                bar.set_postfix(loss=f"{terms['loss']:.1f}", seq_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
            done = step + 1
            if done % spec.checkpoint_every == 0 or done == spec.steps or stop["signal"]:
                save(done)
            if stop["signal"]:
                if is_main:
                    bar.write(f"{stop['signal']}: saved step {done} in {ckpt.directory}; rerun the same command to resume")
                break
    finally:
        bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if is_main:
            metrics_file.close()
            writer.close()
        ckpt.close()
    if stop["signal"]:
        raise SystemExit(0)
    return model

