"""Train, evaluate and draw the Flow Factorized VAE.

    python train/run.py                       # train the `quick` preset (embedded MNIST), eval, figures
    python train/run.py --preset mnist --data-dir ~/data/mnist
    python train/run.py eval --run runs/quick-…  # rewrite eval.json and figures of a saved run
    python train/run.py sample --run runs/quick-…
    python train/run.py --model beta-vae      # any method of the comparison, any preset
    python train/run.py compare --preset quick --seeds 3   # the paper's Table 1 layout: compare.md

Subcommands: train (the default), eval, sample, compare. Re-running with an --out that holds a checkpoint
resumes it; SIGINT/SIGTERM save a checkpoint and exit 0.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop import RunError, RunSpec
from presets import PRESETS

ModelName = Literal["vae", "beta-vae", "factorvae", "slowvae", "tvae", "poflow", "ffvae", "ffvae-weak", "ffvae-group"]
MODEL_NAMES: tuple[ModelName, ...] = (
    "vae",
    "beta-vae",
    "factorvae",
    "slowvae",
    "tvae",
    "poflow",
    "ffvae",
    "ffvae-weak",
    "ffvae-group",
)


@dataclasses.dataclass
class Train:
    """Train a model (resuming --out if it holds a checkpoint), then evaluate it and draw figures."""

    preset: str = "quick"
    """one of: quick (CPU minutes, embedded MNIST), mnist, mnist-weak, shapes3d, falcor3d, isaac3d"""
    model: ModelName | None = None
    """the method: ffvae (k observed), ffvae-weak (k inferred), ffvae-group (the authors' variant: one k per
    batch) or a baseline; default: the preset's FFVAE"""
    data_dir: Path | None = None
    """dataset folder (MNIST IDX files, 3dshapes.h5, or the PNG folder); default: embedded/procedural data"""
    steps: int | None = None
    """training steps (default: the preset's)"""
    batch_size: int | None = None
    """sequences per step, over all devices (default: the preset's)"""
    seed: int = 0
    """seeds the model, the data order and the training noise"""
    out: Path | None = None
    """run directory (default: runs/<preset>-<time>/); one holding a checkpoint is resumed"""
    checkpoint_every: int | None = None
    """save a checkpoint every N steps (and always at the end)"""
    fresh: bool = False
    """discard checkpoints and logs already in --out and start over"""
    latent_dim: int | None = None
    """override the preset's latent dimension d"""
    width: int | None = None
    """override the conv width of the encoder/decoder"""
    potential_width: int | None = None
    """override the hidden width of the potential and force MLPs"""
    learning_rate: float | None = None
    """override the preset's Adam learning rate"""
    laplacian: Literal["exact", "hutchinson"] | None = None
    """divergence of the flows: exact trace (forward mode) or Hutchinson's estimator"""
    slice_size: int | None = None
    """sequences per flow slice and decoder chunk (memory and cache use, not the maths; default: the
    preset's; on a GPU pass the batch size)"""
    workers: int | None = None
    """data-loading processes (0 = in the main process)"""
    eval_sequences: int | None = None
    """held-out sequences scored at the end (and by eval)"""
    ll_samples: int | None = None
    """importance samples per frame for the log-likelihood (SPEC: 100 for reported tables)"""
    factor_sizes: tuple[int, ...] | None = None
    """override the dataset's factor grid (a reduced grid of a factor dataset, e.g. for tests)"""
    num_frames: int | None = None
    """override frames per sequence T+1 (default: the dataset's, SPEC §1)"""
    matmul_precision: Literal["float32", "tensorfloat32", "bfloat16"] = "float32"
    """precision of the step's matmuls/convs on GPUs/TPUs (tensorfloat32, bfloat16: faster); CPUs use float32"""
    skip_eval: bool = False
    """train only; run `eval --run DIR` later"""
    coordinator: str | None = None
    """multi-host: address host:port of process 0 (jax.distributed); also needs --num-processes/--process-id"""
    num_processes: int = 1
    """multi-host: number of processes"""
    process_id: int = 0
    """multi-host: this process's index"""


@dataclasses.dataclass
class Eval:
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


@dataclasses.dataclass
class Compare:
    """Train and evaluate every listed method for the same steps, batch and width over several seeds;
    write compare.json and compare.md (methods × E_k per transformation and log-likelihood, mean ± std).
    Re-running resumes: finished runs are reused, interrupted ones continue from their checkpoints."""

    preset: str = "quick"
    """the preset every method trains with"""
    seeds: int = 3
    """seeds 0 … N−1 per method"""
    models: tuple[ModelName, ...] = MODEL_NAMES
    """methods to compare (rows of the table)"""
    steps: int | None = None
    """override the preset's steps (the same budget for every method)"""
    out: Path | None = None
    """where the runs and the table go (default: runs/compare-<preset>)"""
    data_dir: Path | None = None
    """dataset folder, as for train"""
    latent_dim: int | None = None
    """override the preset's latent dimension (every method)"""
    width: int | None = None
    """override the preset's conv width (every method)"""
    potential_width: int | None = None
    """override the hidden width of the potentials (FFVAE, PoFlow)"""
    workers: int | None = None
    """data-loading processes per run"""
    eval_sequences: int | None = None
    """held-out sequences scored per run"""
    ll_samples: int | None = None
    """importance samples per frame for the log-likelihood"""


COMMANDS = {"train": Train, "eval": Eval, "sample": Sample, "compare": Compare}


def resolve(args: Train) -> RunSpec:
    from eqx_ffvae import data, methods

    if args.preset not in PRESETS:
        raise RunError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[args.preset]
    steps = p.steps if args.steps is None else args.steps
    if steps < 1:
        raise RunError(f"--steps must be ≥ 1, got {steps}")
    dataset = p.dataset
    if dataset == "shapes3d" and args.data_dir is None:
        dataset = "procedural-shapes"
        print("no --data-dir given for shapes3d: using the procedural shapes renderer (same factors, offline)")
    if dataset in ("falcor3d", "isaac3d") and args.data_dir is None:
        raise RunError(f"preset {args.preset} needs --data-dir pointing at the {dataset} PNG folder (see README)")
    if args.data_dir is not None and not args.data_dir.exists():
        raise RunError(f"--data-dir {args.data_dir} does not exist")
    info = data.dataset_info(dataset)
    method = args.model or ("ffvae-weak" if p.weak else "ffvae")
    pick = lambda value, default: default if value is None else value
    slice_size = pick(args.slice_size, p.slice_size)
    try:
        model = methods.make_config(
            method,
            image_shape=info.image_shape,
            num_frames=pick(args.num_frames, info.num_frames),
            latent_dim=pick(args.latent_dim, p.latent_dim),
            num_flows=info.num_flows,
            width=pick(args.width, p.width),
            potential_width=pick(args.potential_width, p.potential_width),
            laplacian=pick(args.laplacian, p.laplacian),
            **({} if slice_size is None else {"slice_size": slice_size}),
            hj_weight=p.hj_weight,
            flow_kl_weight=p.flow_kl_weight,
        )
    except ValueError as err:
        raise RunError(str(err)) from None
    batch = pick(args.batch_size, p.batch_size)
    if batch < 1:
        raise RunError(f"--batch-size must be ≥ 1, got {batch}")
    every = pick(args.checkpoint_every, p.checkpoint_every)
    if every < 1:
        raise RunError(f"--checkpoint-every must be ≥ 1, got {every}")
    return RunSpec(
        preset=args.preset,
        dataset=dataset,
        data_dir=None if args.data_dir is None else str(args.data_dir.resolve()),
        seed=args.seed,
        steps=steps,
        batch_size=batch,
        learning_rate=pick(args.learning_rate, p.learning_rate),
        checkpoint_every=every,
        workers=pick(args.workers, p.workers),
        model=dataclasses.asdict(model),
        eval={
            "eval_sequences": pick(args.eval_sequences, p.eval_sequences),
            "eval_batch_size": p.eval_batch_size,
            "ll_samples": pick(args.ll_samples, p.ll_samples),
            "shift_batches": p.shift_batches,
        },
        factor_sizes=None if args.factor_sizes is None else list(args.factor_sizes),
        method=method,
        matmul_precision=args.matmul_precision,
    )


def _load_spec(run: Path) -> RunSpec:
    path = run / "config.json"
    if not path.exists():
        raise RunError(f"{run} is not a run directory (no config.json); pass the --out of a training run")
    return RunSpec.from_json(json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv and argv[0] in COMMANDS else "train"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    args = tyro.cli(
        COMMANDS[name],
        args=rest,
        prog=f"run.py {name}" if name != "train" else "run.py",
        description=(__doc__ if name == "train" else None),
    )
    try:
        return _dispatch(name, args)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(name: str, args) -> int:
    import jax

    if name == "train":
        if args.coordinator is not None:
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        spec = resolve(args)
        from evaluate import run_eval
        from loop import train

        out = args.out or Path("runs") / f"{spec.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            print(json.dumps(spec.to_json(), indent=2))
            print(f"run directory: {out}")
        start = time.perf_counter()
        model = train(spec, out, fresh=args.fresh)
        if jax.process_index() == 0:
            print(f"trained in {time.perf_counter() - start:.0f} s")
            if not args.skip_eval:
                run_eval(spec, _local(model), out)
                print(f"wrote {out / 'eval.json'} and {out / 'figures'}; total {time.perf_counter() - start:.0f} s")
        return 0
    if name == "compare":
        from compare import run_compare

        def spec_for(model: str, seed: int) -> RunSpec:
            shared = (
                "preset",
                "steps",
                "data_dir",
                "latent_dim",
                "width",
                "potential_width",
                "workers",
                "eval_sequences",
                "ll_samples",
            )
            return resolve(Train(model=model, seed=seed, **{f: getattr(args, f) for f in shared}))

        run_compare(args, spec_for)
        return 0
    from evaluate import run_eval, run_sample
    from loop import restore_model

    spec = _load_spec(args.run)
    model, step = restore_model(spec, args.run)
    print(f"loaded {args.run} at step {step}")
    if name == "eval":
        run_eval(spec, model, args.run)
    else:
        run_sample(spec, model, args.run, num=args.num, seed=args.seed)
    return 0


def _local(model):
    """This process's copy of a replicated model (multi-host arrays are not all addressable)."""
    import equinox as eqx
    import jax

    if jax.process_count() == 1:
        return model
    return jax.tree.map(lambda x: x.addressable_data(0) if eqx.is_array(x) else x, model)


if __name__ == "__main__":
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    sys.exit(main())
