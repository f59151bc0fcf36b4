"""Time the whole training step (loss, grads, optax update) at the paper's and smaller configs.

    python benchmarks/step.py [--json PATH] [--configs a b c] [--laplacians exact hutchinson]
                              [--matmul-precision float32] [--slice-size N]

Configs: (a) d=324, B=128, T=8, K=3 (docs/method.md §7 MNIST: conv widths d, 2d, 3d, 2d; potential width d);
(b) d=64, B=128; (c) d=64, B=32; and, on request, `quick` (the default preset of train/run.py).
Each row runs in its own process, so `peak_rss_mb` is that configuration's own peak: read after the
timed steps, before the FLOP count's compilations (the matmul yardstick before the step is built,
its memory handed back). With `--compile-cache DIR` the step is compiled through the persistent
cache runs use (a second run loads it: a resumed or repeated run's memory). `compile_s`
is lowering plus XLA compilation of the step, nothing run. FLOPs come from XLA:CPU's cost analysis
of the compiled step (on a GPU the step is compiled for the CPU once more to count them: XLA:GPU's
count leaves out its cuBLAS calls), which counts a loop body once: one flow step of `slice_size`
sequences and one decoder chunk (its dense part on those sequences' frames, its spatial part on one
slice of them).
The rest of the T flow steps and T + 1 frames of the whole batch are added from the cost analysis
of one flow step and of one frame's decode of the batch (each with its gradient), so GFLOP/s counts
all of them. Recomputation (the flow's checkpointed backward re-evaluates each step) is not
counted. `matmul_gflops_per_s` is jax's float32 2048×2048 matmul rate, at the step's matmul
precision, measured in the same process just before and just after the timed steps (the mean of the
two medians), so the fraction compares the step with the machine as it ran then. The step is
built and compiled as a run builds and compiles it (`methods.make_model`, `compile_step`, which
returns the construction's and XLA's scratch memory to the OS). Every row also records the machine (`cpu_model`, `cpu_count`, the
AVX-512/AMX/AVX2/FMA `cpu_flags`, `xla_flags`) and `runtime_baseline_rss_mb`, the peak RSS of an empty
jax process (import, one small op), with `above_baseline_mb` the row's peak above it.

`--end-to-end PRESET` times the real training loop instead (`runs.TrainingRun`: Grain data, the
step, metrics.jsonl and TensorBoard logging, a checkpoint every `--checkpoint-every` steps and at
the end, and the wait for its writing) for `--steps` steps after compiling, next to the step alone
(the compiled `training.FlatStep` the loop calls, given batches and keys put on the device before
its clock starts), in one process. The two take turns in blocks of `--block` steps (step alone,
loop, step alone, loop, …), each block started and ended with the device idle, so a machine whose
speed drifts (a shared VM) slows both alike; a block boundary costs the loop its overlap once, so
the loop's figure is if anything low. Each of `--repeats` repeats is a fresh run; it reports both
rates (the medians over repeats) and their ratio (the loop's share of the step-alone rate).

On a GPU: `--matmul-precision tensorfloat32|bfloat16` times the step (and the matmul yardstick) at
that precision; `--slice-size` overrides the step's `slice_size` (the sequences per flow slice and
decoder chunk: the default 16 keeps a CPU's working set small, a GPU wants the whole batch); `device_peak_mb` is
the accelerator's peak memory in use (null on a CPU, where `peak_rss_mb` is the measure).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from eqx_ffvae.presets import PRESETS

_QUICK = PRESETS["quick"]  # train/run.py's default
CONFIGS = {
    "a": {"d": 324, "batch": 128},
    "b": {"d": 64, "batch": 128},
    "c": {"d": 64, "batch": 32},
    "quick": {
        "d": _QUICK.latent_dim,
        "batch": _QUICK.batch_size,
        "width": _QUICK.width,
        "potential_width": _QUICK.potential_width,
    },
}
DEFAULT_CONFIGS = ["a", "b", "c"]
T, K = 8, 3


_EMPTY_RUNTIME = (
    "import resource, jax, jax.numpy as jnp; jnp.ones(8).sum().block_until_ready(); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
)


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def runtime_baseline_mb() -> float:
    """Peak RSS of a fresh process that imports jax and runs one small op: the runtime's own share of
    every row's `peak_rss_mb` (compare the part above it, `above_baseline_mb`, across frameworks)."""
    out = subprocess.run([sys.executable, "-c", _EMPTY_RUNTIME], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """The CPU this ran on: its model, core count, AVX-512 flags, and the XLA_FLAGS in effect."""
    import os

    model, flags = platform.processor() or platform.machine(), []
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), model
        )
        line = next((line for line in info.splitlines() if line.startswith("flags")), "")
        flags = sorted(f for f in line.split(":", 1)[-1].split() if f.startswith(("avx512", "amx", "avx2", "fma")))
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _flops(compiled) -> float:
    cost = getattr(compiled, "compiled", compiled).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def _cpu_flops(jitted, *args) -> float:
    """FLOPs of the jitted function at these arguments' shapes from XLA:CPU's cost analysis, whatever
    the default backend: XLA:GPU's leaves out its library calls (the cuBLAS GEMMs, nearly all of this
    step's work; on an H200 it counted ~1% of (a)'s FLOPs)."""
    import equinox as eqx
    import jax

    cpu = jax.devices("cpu")[0]
    on_cpu = jax.tree.map(lambda x: jax.device_put(x, cpu) if eqx.is_array(x) else x, args)  # committed: a CPU compile
    return _flops(jitted.lower(*on_cpu).compile())


def matmul_gflops(n: int = 2048, repeats: int = 10, precision: str = "float32") -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    with jax.default_matmul_precision(precision):  # part of jit's cache key: every call inside it
        jax.block_until_ready(f(a))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(f(a))
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def build(config: str, laplacian: str, precision: str = "float32", slice_size: int | None = None) -> dict:
    """The FFVAE training step of `config` compiled as the run compiles it and run once: {"compiled",
    "step", "model", "opt_state", "data", "slice_size", "compile_s", "from_cache", "d", "batch"} (what
    `measure` and benchmarks/profile_step.py time)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import eqx_ffvae as ff
    from eqx_ffvae import compile_cache
    from eqx_ffvae.layout import default_slice_size
    from eqx_ffvae.methods import make_model
    from eqx_ffvae.training import compile_step, make_optimizer, make_step

    spec = CONFIGS[config]
    d, batch = spec["d"], spec["batch"]
    cfg = ff.FFVAEConfig(
        image_shape=(3, 28, 28),
        num_frames=T + 1,
        latent_dim=d,
        num_flows=K,
        width=spec.get("width", d),
        potential_width=spec.get("potential_width", d),
        laplacian=laplacian,
    )
    slice_size = next(s for s in (slice_size, spec.get("slice_size"), default_slice_size(batch)) if s is not None)
    model = make_model("ffvae", cfg, key=jr.key(0))  # one compiled program, as runs build it
    optimizer = make_optimizer(1e-4)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    step = make_step(optimizer, slice_size=slice_size, matmul_precision=precision)
    data = {"frames": jr.uniform(jr.key(1), (batch, T + 1, 3, 28, 28)), "k": jnp.arange(batch, dtype=jnp.int32) % K}

    before_compile_mb, hits = _rss_mb(), compile_cache.hits()
    compiled, compile_s = compile_step(step, model, opt_state, data, jr.key(2))
    from_cache = compile_cache.hits() > hits
    compile_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model, opt_state, loss, _ = compiled(model, opt_state, data, jr.key(2))
    jax.block_until_ready(loss)
    return {
        "rss_before_compile_mb": before_compile_mb,
        "peak_rss_through_compile_mb": compile_peak_mb,
        "compiled": compiled,
        "step": step,
        "model": model,
        "opt_state": opt_state,
        "data": data,
        "slice_size": slice_size,
        "compile_s": compile_s,
        "from_cache": from_cache,
        "d": d,
        "batch": batch,
    }


def measure(
    config: str,
    laplacian: str,
    steps: int,
    precision: str = "float32",
    slice_size: int | None = None,
    cache: str | None = None,
) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import eqx_ffvae as ff
    from eqx_ffvae import compile_cache
    from eqx_ffvae.layout import Layout, slice_rows
    from eqx_ffvae.training import release_free_memory

    if cache:
        compile_cache.enable(cache)
    matmul = [matmul_gflops(precision=precision)]
    release_free_memory()
    built = build(config, laplacian, precision, slice_size)
    compiled, step, model, opt_state, data = (built[k] for k in ("compiled", "step", "model", "opt_state", "data"))
    slice_size, compile_s, d, batch = built["slice_size"], built["compile_s"], built["d"], built["batch"]

    times = []
    for i in range(steps):
        start = time.perf_counter()
        model, opt_state, loss, _ = compiled(model, opt_state, data, jr.key(10 + i))
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the step's process, nothing else yet
    rss_after_steps_mb = _rss_mb()
    matmul.append(matmul_gflops(precision=precision))

    pot = model.flows.potential(0)
    zs = jr.normal(jr.key(3), (batch, d))

    def one_flow_step(pot, zs, key):
        def vf(z, k):
            probes = ff.flows.hutchinson_probes(k, 1, d) if laplacian == "hutchinson" else None
            g, lap = ff.flows.velocity_and_laplacian(pot, 0.5, z, laplacian, probes)
            return jnp.sum(g**2) - lap

        return jnp.sum(jax.vmap(vf)(zs, jr.split(key, batch)))

    def one_frame_decode(model, zs, xs):  # one chunk of one slice: each loop runs once
        return model.decoder.summed_log_likelihood(zs[None], xs[None], Layout(batch))

    def one_frame_features(model, zs):
        return jnp.sum(jax.vmap(model.decoder.features)(zs))

    # The compiled step's cost counts each loop body once: one flow step of `rows` sequences, and one
    # decoder chunk (`features` of rows·(T+1) frames) with one slice in it (the spatial layers of `rows`
    # frames). Add the rest: T flow steps, and T + 1 frames of the whole batch through both parts.
    rows = slice_rows(batch, slice_size)
    cost = lambda f, *args: _cpu_flops(eqx.filter_jit(eqx.filter_value_and_grad(f)), *args)  # noqa: E731
    flow_b = cost(one_flow_step, pot, zs, jr.key(4))
    features_b = cost(one_frame_features, model, zs)
    pixels_b = cost(one_frame_decode, model, zs, data["frames"][:, 0]) - features_b
    n = T + 1
    on_cpu = jax.devices()[0].platform == "cpu"
    flops = _flops(compiled) if on_cpu else _cpu_flops(step, model, opt_state, data, jr.key(2))
    flops += (T - rows / batch) * flow_b
    flops += n * (1 - rows / batch) * features_b + (n - rows / batch) * pixels_b
    memory = jax.devices()[0].memory_stats() or {}
    median = statistics.median(times)
    return {
        "config": config,
        "laplacian": laplacian,
        "d": d,
        "batch": batch,
        "platform": jax.devices()[0].platform,
        "matmul_precision": precision,
        "slice_size": slice_size,
        "median_s": median,
        "compile_s": compile_s,
        "flops": flops,
        "gflops_per_s": flops / median / 1e9,
        "matmul_gflops_per_s": statistics.mean(matmul),
        "step_from_compile_cache": built["from_cache"],
        "peak_rss_mb": peak_rss_mb,
        "rss_before_compile_mb": built["rss_before_compile_mb"],
        "peak_rss_through_compile_mb": built["peak_rss_through_compile_mb"],
        "rss_after_steps_mb": rss_after_steps_mb,
        "device_peak_mb": memory["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in memory else None,
    }


def end_to_end(
    preset: str,
    steps: int,
    checkpoint_every: int | None,
    repeats: int,
    precision: str,
    slice_size: int | None,
    frames_on: str = "auto",
    block: int = 50,
):
    """Steps/s of the real loop and of the step alone at `preset` (see the module docstring)."""
    import functools
    import tempfile

    import equinox as eqx
    import jax
    import jax.random as jr
    import numpy as np

    from eqx_ffvae import data, runs
    from eqx_ffvae.data import device
    from eqx_ffvae.training import FlatStep, make_mesh, make_step, replicate, shard_batch, with_step

    spec = runs.resolve(
        preset,
        steps=steps,
        checkpoint_every=checkpoint_every,
        slice_size=slice_size,
        matmul_precision=precision,
        frames_on=frames_on,
    )
    on_device = runs.frames_made_on_device(spec)

    model, optimizer, opt_state = runs.build(spec)
    mesh = make_mesh()
    make_frames = functools.partial(device.frames, num_frames=spec.model.num_frames) if on_device else None
    step = make_step(
        optimizer,
        slice_size=spec.slice_size,
        mesh=mesh,
        matmul_precision=spec.matmul_precision,
        make_frames=make_frames,
    )
    it = data.batch_iterator(runs.sequences(spec, compact=on_device), spec.batch_size)
    batch = next(it)
    host = with_step({name: v for name, v in batch.items() if name in runs.STEP_INPUTS}, 0)
    model, opt_state = replicate((model, opt_state), mesh)
    flat = FlatStep(step, model, opt_state, shard_batch(host, mesh), jr.key(0))  # as the loop calls it
    leaves = flat.leaves(model, opt_state)

    def alone_block(n: int) -> float:
        """Seconds for n steps alone. The step donates its batch, so each step gets its own copy, all
        put on the device before the clock starts (with the steps' keys)."""
        nonlocal leaves
        batches = jax.block_until_ready([shard_batch(host, mesh) for _ in range(n)])
        keys = jax.block_until_ready([jr.key(i) for i in range(n)])
        start = time.perf_counter()
        for batch, key in zip(batches, keys):
            leaves, loss, _ = flat(leaves, batch, key)
        jax.block_until_ready(loss)
        return time.perf_counter() - start

    def drained(run) -> None:
        jax.block_until_ready(eqx.filter(run.model, eqx.is_array))

    def one_repeat(root: str) -> tuple[float, float]:
        """(seconds of the loop, seconds of the step alone) over `steps` steps each, in blocks."""
        run = runs.TrainingRun(spec, root)
        events = iter(run)
        for event in events:
            if isinstance(event, runs.Compiled):
                break
        loop_s = alone_s = 0.0
        for first in range(0, steps, block):
            n = min(block, steps - first)
            alone_s += alone_block(n)
            start = time.perf_counter()
            if first + n < steps:
                for _ in events:
                    if run.step >= first + n:
                        break
                drained(run)
            else:
                for _ in events:  # to the end: the last save, and the wait for its writing
                    pass
            loop_s += time.perf_counter() - start
        return loop_s, alone_s

    alone_block(block)  # warm-up
    alone, loop = [], []
    with tempfile.TemporaryDirectory() as root:
        for i in range(repeats):
            loop_s, alone_s = one_repeat(f"{root}/loop{i}")
            alone.append(steps / alone_s)
            loop.append(steps / loop_s)
    return {
        "mode": "end-to-end",
        "preset": preset,
        "method": spec.method,
        "batch": spec.batch_size,
        "steps": steps,
        "checkpoint_every": spec.checkpoint_every,
        "repeats": repeats,
        "block": block,
        "platform": jax.devices()[0].platform,
        "matmul_precision": spec.matmul_precision,
        "slice_size": spec.slice_size,
        "frames_made_on_device": on_device,
        "step_alone_steps_per_s": statistics.median(alone),
        "loop_steps_per_s": statistics.median(loop),
        "loop_share_of_step_alone": statistics.median(loop) / statistics.median(alone),
        "step_alone_each": alone,
        "loop_each": loop,
        "loop_share_each_pair": [b / a for a, b in zip(alone, loop)],
        "host_bytes_per_sequence": int(sum(np.asarray(v).nbytes for v in host.values()) // spec.batch_size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--laplacians", nargs="+", default=["exact", "hutchinson"], choices=["exact", "hutchinson"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after compile (median reported)")
    parser.add_argument(
        "--matmul-precision",
        default="float32",
        choices=["float32", "tensorfloat32", "bfloat16"],
        help="precision of the step's matmuls/convs and of the matmul yardstick (GPUs/TPUs)",
    )
    parser.add_argument("--slice-size", type=int, default=None, help="override the step's slice_size")
    parser.add_argument("--json", default=None)
    parser.add_argument("--end-to-end", metavar="PRESET", default=None, help="time the real training loop")
    parser.add_argument(
        "--checkpoint-every", type=int, default=None, help="(--end-to-end) steps between saves (default: the preset's)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="(--end-to-end) fresh runs, each against the step alone")
    parser.add_argument("--block", type=int, default=50, help="(--end-to-end) steps per turn of loop and step alone")
    parser.add_argument("--frames-on", default="auto", choices=["auto", "host", "device"], help="(--end-to-end)")
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help="the persistent compilation cache runs use, in DIR: run twice, and the second run's rows "
        "(step_from_compile_cache true) are a resumed or repeated run's memory, with no XLA compile",
    )
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "LAPLACIAN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = measure(args.one[0], args.one[1], args.steps, args.matmul_precision, args.slice_size, args.compile_cache)
        print(json.dumps(row))
        return

    import jax
    from _util import print_table, write_json

    if args.end_to_end:
        row = end_to_end(
            args.end_to_end,
            args.steps,
            args.checkpoint_every,
            args.repeats,
            args.matmul_precision,
            args.slice_size,
            args.frames_on,
            args.block,
        )
        print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {platform.processor() or platform.machine()}")
        print_table(
            [row],
            [
                "preset",
                "method",
                "batch",
                "steps",
                "checkpoint_every",
                "frames_made_on_device",
                "step_alone_steps_per_s",
                "loop_steps_per_s",
                "loop_share_of_step_alone",
                "host_bytes_per_sequence",
            ],
        )
        write_json([row], args.json)
        return

    rows = []
    for config in args.configs:
        for lap in args.laplacians:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    config,
                    lap,
                    "--steps",
                    str(args.steps),
                    "--matmul-precision",
                    args.matmul_precision,
                    *([] if args.slice_size is None else ["--slice-size", str(args.slice_size)]),
                    *([] if args.compile_cache is None else ["--compile-cache", args.compile_cache]),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"config {config}/{lap} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["fraction_of_matmul"] = row["gflops_per_s"] / row["matmul_gflops_per_s"]
            rows.append(row)
            print(f"{config}/{lap}: {row['median_s']:.3f} s/step", file=sys.stderr)
    baseline, where = runtime_baseline_mb(), machine()
    for row in rows:
        row.update(runtime_baseline_rss_mb=baseline, above_baseline_mb=row["peak_rss_mb"] - baseline, **where)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {where['cpu_model']} ({where['cpu_count']} cores)")
    print(f"an empty jax process (import, one op): {baseline:.0f} MB peak RSS")
    columns = [
        "config",
        "laplacian",
        "d",
        "batch",
        "slice_size",
        "median_s",
        "compile_s",
        "flops",
        "gflops_per_s",
        "matmul_gflops_per_s",
        "fraction_of_matmul",
        "peak_rss_mb",
        "above_baseline_mb",
        "step_from_compile_cache",
    ]
    if any(row["device_peak_mb"] is not None for row in rows):
        columns += ["device_peak_mb"]
    print(f"matmul precision {args.matmul_precision}")
    print_table(rows, columns)
    write_json(rows, args.json)


if __name__ == "__main__":
    main()
