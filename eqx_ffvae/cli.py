"""The command line: `python train/run.py …` or the installed `eqx-ffvae …` (the same program).

A thin layer over `runs`: it parses typed options (tyro), prints, draws progress bars and figures, and
owns the process-level settings (signal handlers, the compilation cache, returning freed memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import http.client
import inspect
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import jax
import tyro
from absl import flags
from tqdm import tqdm

from . import compile_cache as compile_cache_module
from . import data, figures, methods, runs
from .claims import write_claims
from .compare import run_compare
from .data.download import download_shapes3d
from .data.factors import prepare_png_folder
from .data.mnist import download_mnist
from .evaluation import format_table
from .presets import PRESETS
from .runs import RunError
from .tensorboard import log_evaluation

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
ModelName = Literal[tuple(methods.METHODS)]  # type: ignore[valid-type]

SUBCOMMANDS = """subcommands (the first argument; train when omitted):
  train     train a model (resuming --out if it holds a checkpoint), evaluate it, draw figures
  eval      rewrite eval.json and the figures of a run from its newest checkpoint
  sample    draw random latents pushed along every flow of a run
  compare   train and evaluate several methods over seeds; write compare.json and compare.md
  claims    the paper's claims put to a comparison's records: claims.json and claims.md
  download  fetch full MNIST or Shapes3D into --data-dir (checksummed, resumable)
"""


def _preset_table() -> str:
    head = f"{'preset':<11} {'data':<9} {'model':<11} {'d':>4} {'width':>5} {'steps':>6} {'batch':>5} {'lr':>7}  about"
    rows = [
        f"{name:<11} {p.dataset:<9} {p.method:<11} {p.latent_dim:>4} {p.width:>5} {p.steps:>6} {p.batch_size:>5} "
        f"{p.learning_rate:>7.0e}  {p.about}"
        for name, p in PRESETS.items()
    ]
    return "presets:\n  " + "\n  ".join([head, *rows])


EPILOG = f"{SUBCOMMANDS}\n{_preset_table()}\n\nmodels: {', '.join(f'{n} ({m.label}, k: {m.supervision})' for n, m in methods.METHODS.items())}"


def _per_preset(field: str) -> str:
    values = {}
    for name, p in PRESETS.items():
        values.setdefault(getattr(p, field), []).append(name)
    listed = "; ".join(f"{', '.join(names)}: {value}" for value, names in values.items())
    return f"(default: the preset's — {listed})"


def _override(help_text: str, field: str, metavar: str = "INT"):
    return tyro.conf.arg(metavar=metavar, help=help_text, help_behavior_hint=_per_preset(field))


@dataclasses.dataclass(kw_only=True)
class Cached:
    """Commands that compile models (train, eval, compare)."""

    compile_cache: bool = True
    """keep compiled programs in JAX's persistent compilation cache ($EQX_FFVAE_COMPILE_CACHE, else
    ~/.cache/eqx_ffvae/jax), so a repeated or resumed run loads its training step instead of
    compiling it again"""


@dataclasses.dataclass
class Shared(Cached):
    """Options a training run and a comparison share."""

    preset: PresetName = "quick"
    """the named configuration (the presets table above)"""
    data_dir: Annotated[
        Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="(default: embedded or procedural data)")
    ] = None
    """dataset folder (MNIST IDX files, 3dshapes.h5, or the PNG folder)"""
    steps: Annotated[int | None, _override("training steps", "steps")] = None
    latent_dim: Annotated[int | None, _override("latent dimension d", "latent_dim")] = None
    width: Annotated[int | None, _override("conv width of the encoder/decoder", "width")] = None
    potential_width: Annotated[
        int | None, _override("hidden width of the potential and force MLPs (FFVAE, PoFlow)", "potential_width")
    ] = None
    workers: Annotated[int | None, _override("data-loading processes (0 = in the main process)", "workers")] = None
    eval_sequences: Annotated[int | None, _override("held-out sequences scored", "eval_sequences")] = None
    ll_samples: Annotated[
        int | None,
        _override(
            "importance samples per frame for the log-likelihood (docs/method.md §5: 100 for tables)", "ll_samples"
        ),
    ] = None
    validation_fraction: Annotated[
        float | None,
        _override(
            "share of the data held out of training as validation sequences (to choose learning rates)",
            "validation_fraction",
            "FLOAT",
        ),
    ] = None


@dataclasses.dataclass
class Train(Shared):
    """Train a model (resuming --out if it holds a checkpoint), then evaluate it and draw figures."""

    model: Annotated[
        ModelName | None,
        tyro.conf.arg(metavar="{" + ",".join(methods.METHODS) + "}", help_behavior_hint=_per_preset("method")),
    ] = None
    """the method: ffvae (k observed), ffvae-weak (k inferred), ffvae-group (the authors' variant: one k
    per batch) or a baseline"""
    seed: int = 0
    """seeds the model, the data order and the training noise"""
    out: Annotated[
        Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="(default: runs/<preset>-<time>/)")
    ] = None
    """run directory; one holding a checkpoint is resumed"""
    fresh: bool = False
    """delete what an earlier run wrote in --out (only in a run directory) and start over"""
    batch_size: Annotated[int | None, _override("sequences per step, over all devices", "batch_size")] = None
    learning_rate: Annotated[float | None, _override("Adam learning rate", "learning_rate", "FLOAT")] = None
    checkpoint_every: Annotated[
        int | None, _override("save a checkpoint every N steps (and always at the end)", "checkpoint_every")
    ] = None
    laplacian: Annotated[
        Literal["exact", "hvp", "hessian", "hutchinson"] | None,
        tyro.conf.arg(metavar="{exact,hvp,hessian,hutchinson}", help_behavior_hint=_per_preset("laplacian")),
    ] = None
    """divergence of the flows: exact (forward-mode trace), hvp / hessian (slower exact references), or
    Hutchinson's estimator"""
    density: Annotated[
        Literal["trace", "map"] | None,
        tyro.conf.arg(metavar="{trace,map}", help_behavior_hint=_per_preset("density")),
    ] = None
    """how the FFVAE's training tracks log q_t: trace (the Euler step's −hΔu; fast, but exploited at
    flow-KL weight 1) or map (the Euler map's exact log-determinant; docs/method.md §3)"""
    slice_size: Annotated[
        int | None,
        _override(
            "sequences per flow slice and decoder chunk (memory and speed, never the numbers); "
            "on a GPU or TPU the default is the whole batch",
            "slice_size",
        ),
    ] = None
    frames_on: Literal["auto", "host", "device"] = "auto"
    """where training frames are made: host (Grain builds float32 frames), device (the host ships one
    uint8 digit or uint8 frames per sequence and the step makes the frames), auto (device, on every
    backend: the loop is faster so on a CPU too)"""
    factor_sizes: Annotated[
        tuple[int, ...] | None, tyro.conf.arg(metavar="INT…", help_behavior_hint="(default: the dataset's grid)")
    ] = None
    """override the dataset's factor grid (a reduced grid of a factor dataset, e.g. for tests)"""
    num_frames: Annotated[int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: the dataset's)")] = (
        None
    )
    """frames per sequence T+1"""
    matmul_precision: Literal["float32", "tensorfloat32", "bfloat16"] = "float32"
    """precision of the step's matmuls/convs on GPUs/TPUs (tensorfloat32, bfloat16: faster); CPUs use float32"""
    skip_eval: bool = False
    """train only; run `eval --run DIR` later"""
    coordinator: Annotated[str | None, tyro.conf.arg(metavar="HOST:PORT", help_behavior_hint="(default: one host)")] = (
        None
    )
    """multi-host: address of process 0 (jax.distributed); also needs --num-processes/--process-id"""
    num_processes: int = 1
    """multi-host: number of processes"""
    process_id: int = 0
    """multi-host: this process's index"""


@dataclasses.dataclass
class Eval(Cached):
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
    """seeds the random latents"""


@dataclasses.dataclass
class Compare(Shared):
    """Train and evaluate every listed method for the same steps, batch and width over several seeds;
    write compare.json and compare.md (methods × every probe and log-likelihood, mean ± std over seeds,
    paired bootstrap intervals of each method minus FFVAE).
    Re-running resumes: finished runs are reused, interrupted ones continue from their checkpoints."""

    seeds: int = 3
    """seeds 0 … N−1 per method"""
    models: tuple[ModelName, ...] = tuple(methods.METHODS)
    """methods to compare (rows of the table)"""
    out: Annotated[
        Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="(default: runs/compare-<preset>)")
    ] = None
    """where the runs and the table go"""
    results: Annotated[Path | None, tyro.conf.arg(metavar="PATH")] = None
    """a folder to commit (e.g. results/mnist): each finished run's eval.json, config.json and metrics
    summary land in PATH/runs/<method>/seed<i>/ as it finishes, runs recorded there are not trained
    again, and the table is written there too, so a table can be built in chunks"""
    lr_grid: Annotated[
        tuple[float, ...] | None,
        tyro.conf.arg(metavar="FLOAT…", help_behavior_hint=_per_preset("learning_rates")),
    ] = None
    """learning rates to choose each main method's from, by its own loss on validation sequences
    (seed 0 at every rate; needs --validation-fraction > 0); empty: the preset's learning rate"""
    ablation_seeds: Annotated[int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: --seeds)")] = None
    """seeds of the ablation rows (FFVAE with objective terms removed)"""


@dataclasses.dataclass
class Claims:
    """Put the paper's claims (FFVAE < PoFlow < the other baselines on every E_k; weak ≈ supervised;
    FFVAE the highest likelihood; the baselines' own order) to the records of a `compare --results`
    folder: a verdict per claim from paired 95% bootstrap intervals, and the ablation rows against
    PoFlow and the FFVAE. Writes claims.json and claims.md into that folder; trains nothing."""

    results: Annotated[Path, tyro.conf.arg(metavar="PATH")]
    """the folder given to `compare --results` (it holds runs/<method>/seed<i>/eval.json)"""


@dataclasses.dataclass
class Download:
    """Fetch a dataset into --data-dir, checked against its published checksum; an interrupted download
    resumes when the command is run again. Then train on it with --data-dir."""

    dataset: tyro.conf.Positional[Literal["mnist", "shapes3d"]]
    """mnist: the four IDX files (SHA-256 each); shapes3d: DeepMind's 3dshapes.h5 (MD5 and size)"""
    data_dir: Annotated[Path, tyro.conf.arg(metavar="PATH")]
    """the folder to fill"""
    url: Annotated[str | None, tyro.conf.arg(metavar="URL", help_behavior_hint="(default: the official source)")] = None
    """another source: for mnist the folder URL holding the IDX files, for shapes3d the file's URL"""


@dataclasses.dataclass
class Prepare:
    """Decode a PNG dataset once into a compact store next to its images (uint8 .npy at the preset's
    size): training then reads frames from it instead of decoding and downsampling PNGs per frame."""

    dataset: tyro.conf.Positional[Literal["falcor3d", "isaac3d"]]
    """the NVlabs PNG dataset"""
    data_dir: Annotated[Path, tyro.conf.arg(metavar="PATH")]
    """the folder of its PNGs (the one given to --data-dir)"""
    factor_sizes: Annotated[tuple[int, ...] | None, tyro.conf.arg(metavar="N")] = None
    """the factor grid of a reduced folder (as in training; default: the dataset's)"""


COMMANDS = {
    "train": Train,
    "eval": Eval,
    "sample": Sample,
    "compare": Compare,
    "claims": Claims,
    "download": Download,
    "prepare": Prepare,
}
_SHARED = tuple(
    f.name for f in dataclasses.fields(Shared) if f.name not in {g.name for g in dataclasses.fields(Cached)}
)


class Interrupted(Exception):
    """SIGINT or SIGTERM outside the training loop."""


def spec_from(
    args: Train | Compare, *, model: str | None = None, seed: int = 0, notes: list[str] | None = None
) -> runs.RunSpec:
    """The RunSpec the options describe (`model`/`seed` for a comparison's runs)."""
    shared = {name: getattr(args, name) for name in _SHARED}
    model_fields = {
        "latent_dim": shared.pop("latent_dim"),
        "width": shared.pop("width"),
        "potential_width": shared.pop("potential_width"),
    }
    if isinstance(args, Train):
        model, seed = args.model, args.seed
        model_fields.update(laplacian=args.laplacian, num_frames=args.num_frames, density=args.density)
        shared.update(
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            checkpoint_every=args.checkpoint_every,
            slice_size=args.slice_size,
            factor_sizes=args.factor_sizes,
            matmul_precision=args.matmul_precision,
            frames_on=args.frames_on,
        )
    return runs.resolve(model=model, seed=seed, notes=notes, **shared, **model_fields)


def release_free_memory() -> bool:
    """Give the C allocator's free pages back to the OS (glibc's `malloc_trim`); False where unavailable.

    Compiling a large step frees hundreds of MB of XLA scratch that glibc keeps mapped; the step's
    own buffers are then allocated anew on top, so without this the process's peak RSS counts both.
    """
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    return bool(trim(0))


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
            lambda m, s: spec_from(args, model=m, seed=s),
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
        _evaluate(spec, model, args.run, step)
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
                release_free_memory()
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
        _evaluate(spec, runs.local_copy(run.model), out, run.step)
        say(f"wrote {out / 'eval.json'} and {out / 'figures'}; total {time.perf_counter() - start_time:.0f} s")
    return 0


def _evaluate(spec: runs.RunSpec, model, run_dir: Path, step: int) -> dict:
    """eval.json, the printed table, the figures, and all of them in TensorBoard at `step`."""
    with runs.locked(Path(run_dir)):
        tic = time.perf_counter()
        result, test, shifts = runs.evaluate_with_batches(spec, model)
        runs.atomic_write(Path(run_dir) / "eval.json", json.dumps(result, indent=2))
        print(format_table(result))
        evaluated = time.perf_counter()
        figures.draw_figures(
            spec, model, test, Path(run_dir) / "figures", shifts, figures.matched_flows(result, len(spec.transforms))
        )
        print(f"evaluated in {evaluated - tic:.0f} s, figures in {time.perf_counter() - evaluated:.0f} s")
        log_evaluation(run_dir, step, result, Path(run_dir) / "figures")
    return result


def entry() -> None:
    """The console script and `python train/run.py`: absl flags marked parsed (Grain's workers read
    them), then `main`."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    sys.exit(main(compile_cache=True))
