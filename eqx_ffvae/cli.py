"""The command line: `python train/run.py …` or the installed `eqx-ffvae …` (the same program).

A thin layer over `runs`: it parses typed options (tyro), prints, draws progress bars and figures, and
owns the process-level settings (signal handlers, the compilation cache, returning freed memory).
"""

from __future__ import annotations

import http.client
import inspect
import json
import shlex
import signal
import sys
import time
from pathlib import Path

import jax
import tyro
from absl import flags
from tqdm import tqdm

from . import compile_cache as compile_cache_module
from . import data, runs
from .cli_options import _SHARED, COMMANDS, EPILOG, Cached, Compare, Download, Train
from .data.download import download_shapes3d
from .data.factors import prepare_png_folder
from .data.mnist import download_mnist
from .presets import PRESETS
from .reporting import figures
from .reporting.claims import write_claims
from .reporting.claims_text import write_readme_summary
from .reporting.compare import run_compare
from .reporting.evaluate import evaluate_and_draw
from .runs import RunError


class Interrupted(Exception):
    """SIGINT or SIGTERM outside the training loop."""


def spec_from(
    args: Train | Compare, *, method: str | None = None, seed: int = 0, notes: list[str] | None = None
) -> runs.RunSpec:
    """The RunSpec the options describe (`method`/`seed` for a comparison's runs)."""
    shared = {name: getattr(args, name) for name in _SHARED}
    path = shared.pop("data")
    if path is not None and shared["dataset"] is not None:
        raise RunError(f"--data {path} and --dataset {shared['dataset']} both name the data: pass one")
    if path is not None:
        shared["dataset"] = data.file_dataset(path)
    model_fields = {
        "latent_dim": shared.pop("latent_dim"),
        "width": shared.pop("width"),
        "potential_width": shared.pop("potential_width"),
    }
    if isinstance(args, Train):
        method, seed = args.model, args.seed
        model_fields.update(
            laplacian=args.laplacian,
            num_frames=args.num_frames,
            density=args.density,
            likelihood=args.likelihood,
            pixel_scale=args.pixel_scale,
        )
        shared.update(
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            checkpoint_every=args.checkpoint_every,
            slice_size=args.slice_size,
            factor_sizes=args.factor_sizes,
            matmul_precision=args.matmul_precision,
            frames_on=args.frames_on,
        )
    return runs.resolve(method=method, seed=seed, notes=notes, **shared, **model_fields)


def main(argv: list[str] | None = None, *, compile_cache: bool = False) -> int:
    """Parse `argv` (default: sys.argv[1:]) and run the command; the exit status.

    `compile_cache`: let `train`, `eval` and `compare` turn on JAX's persistent compilation cache
    (`compile_cache.enable`) unless --no-compile-cache is given. It is a process-wide setting that
    outlives the call, so only the program (`entry`) asks for it, never a caller in a larger process.
    """
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv and argv[0] in COMMANDS else "train"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    cls = COMMANDS[name]
    args = tyro.cli(
        cls,
        args=rest,
        prog=f"run.py {name}",
        description=f"{inspect.cleandoc(cls.__doc__ or '')}\n\n{EPILOG}",
    )
    stop = {"reason": None, "training": False, "resume": "rerun the same command to continue"}

    def on_signal(signum, frame):
        stop["reason"] = signal.Signals(signum).name
        if not stop["training"]:
            raise Interrupted(stop["reason"])

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if compile_cache and isinstance(args, Cached) and args.compile_cache:
            try:
                compile_cache_module.enable(compile_cache_module.default_directory())
            except (RuntimeError, OSError) as err:
                raise RunError(f"cannot use the compilation cache: {err}") from None
        return _dispatch(name, args, stop, argv)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as why:
        print(f"{why}: stopped; nothing partial was written ({stop['resume']})", file=sys.stderr)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _dispatch(name: str, args, stop: dict, argv: list[str]) -> int:
    if name == "train":
        return _train(args, stop, argv)
    if name == "compare":
        out = args.out or Path("runs") / f"compare-{args.preset}"
        run_compare(
            list(args.models),
            args.seeds,
            out,
            lambda m, s: spec_from(args, method=m, seed=s),
            log=lambda line: print(line, flush=True),
            results_dir=args.results,
            learning_rates=PRESETS[args.preset].learning_rates if args.lr_grid is None else args.lr_grid,
            ablation_seeds=args.ablation_seeds,
        )
        written = [out] if args.results is None else [out, args.results]
        print("wrote " + " and ".join(f"{d / 'compare.json'}, {d / 'compare.md'}" for d in written))
        return 0
    if name == "claims":
        written = write_claims(args.results)
        if args.readme is not None:
            write_readme_summary(args.readme, args.results)
            written = (*written, args.readme)
        print("wrote " + " and ".join(map(str, written)))
        return 0
    if name == "download":
        return _download(args)
    if name == "prepare":
        info = data.dataset_info(args.dataset)
        try:
            sizes = info.factor_sizes if args.factor_sizes is None else args.factor_sizes
            store = prepare_png_folder(args.data_dir, sizes, info.image_shape[-1])
        except (OSError, ValueError) as err:
            raise RunError(f"prepare {args.dataset}: {err}") from None
        print(f"wrote {store}; training on --data-dir {args.data_dir} now reads it")
        return 0
    spec = runs.read_spec(args.run)
    model, step = runs.restore_model(spec, args.run)
    print(f"loaded {args.run} at step {step}")
    if name == "eval":
        evaluate_and_draw(spec, model, args.run, step)
    else:
        out = figures.draw_samples(spec, model, args.run, num=args.num, seed=args.seed)
        print(f"wrote {len(spec.transforms)} sample grids to {out}")
    return 0


def _download(args: Download) -> int:
    try:
        if args.dataset == "mnist":
            folder = download_mnist(args.data_dir, **({"mirrors": (args.url.rstrip("/") + "/",)} if args.url else {}))
        else:
            folder = download_shapes3d(args.data_dir, url=args.url)
    except (OSError, ValueError, RuntimeError, http.client.HTTPException) as err:
        print(f"download {args.dataset} failed: {err}", file=sys.stderr)
        print("run the same command again to retry (a partial download resumes)", file=sys.stderr)
        return 1
    print(
        f"{args.dataset} verified in {folder}; train on it with: "
        f"python train/run.py --preset {args.dataset} --data-dir {folder}"
    )
    return 0


def resume_command(argv: list[str], out: Path) -> str:
    """The command line that continues the run of `argv` in `out`: the same arguments with `--out`
    made explicit (the default has a timestamp) and without `--fresh` (which would start over)."""
    prog = "python train/run.py" if Path(sys.argv[0]).name == "run.py" else "eqx-ffvae"
    args = [a for a in argv if a != "--fresh"]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    return f"{prog} {shlex.join(args)}"


def _train(args: Train, stop: dict, argv: list[str]) -> int:
    if args.coordinator is not None:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    notes: list[str] = []
    spec = spec_from(args, notes=notes)
    out = args.out or Path("runs") / f"{spec.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    stop["resume"] = f"to continue: {resume_command(argv, out)}"
    main_process = jax.process_index() == 0
    say = print if main_process else (lambda *a, **k: None)
    for note in notes:
        say(note)
    say(json.dumps(spec.to_json(), indent=2))
    say(f"run directory: {out}")
    start_time = time.perf_counter()
    run = runs.TrainingRun(spec, out, fresh=args.fresh, should_stop=lambda: stop["reason"])
    bar = None
    stop["training"] = True
    try:
        for event in run:
            if isinstance(event, runs.Started):
                for note in event.notes:
                    say(note)
                if event.resumed and event.start < event.total:
                    say(f"resuming {out} from step {event.start}")
                bar = tqdm(
                    total=event.total, initial=event.start, disable=not main_process, desc="train", dynamic_ncols=True
                )
            elif isinstance(event, runs.Compiled):
                how = "loaded from the compilation cache" if event.from_cache else "compiled"
                bar.write(
                    f"traced the training step in {event.trace_seconds:.1f} s, {how} in {event.compile_seconds:.1f} s"
                )
            elif isinstance(event, runs.StepRecord):
                bar.set_postfix(loss=f"{event.terms['loss']:.1f}", seq_s=f"{event.sequences_per_s:.0f}", refresh=False)
                bar.update(1)
            elif isinstance(event, runs.Stopped):
                bar.write(f"{event.reason}: saved step {event.step} in {out / 'checkpoints'}; {stop['resume']}")
                return 0
    finally:
        stop["training"] = False
        if bar is not None:
            bar.close()
    if stop["reason"]:
        raise Interrupted(stop["reason"])
    if run.trained_steps:
        say(f"trained {run.trained_steps} steps in {time.perf_counter() - start_time:.0f} s")
    if main_process and not args.skip_eval:
        evaluate_and_draw(spec, runs.local_copy(run.model), out, run.step)
        say(f"wrote {out / 'eval.json'} and {out / 'figures'}; total {time.perf_counter() - start_time:.0f} s")
    return 0


def entry() -> None:
    """The console script and `python train/run.py`: absl flags marked parsed (Grain's workers read
    them), then `main`."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    sys.exit(main(compile_cache=True))
