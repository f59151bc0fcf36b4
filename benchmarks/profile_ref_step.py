"""Where the authors' PyTorch training step spends its time: `torch.profiler` around the shared harness.

    /tmp/ref-venv/bin/python benchmarks/profile_ref_step.py --harness ../shared/bench/ref_step.py \
        [--configs quick c b a] [--steps 2] [--json PATH]

Runs in the reference environment (torch, kornia and the authors' repository: the harness's README
says how to set them up), not in this package's (`--help` needs neither). For each configuration, the harness's `main()`
(their model classes, their loop body, `--warmup 1 --steps N`) runs under `torch.profiler` with FLOP
counting; every operator's *self* CPU time (time in the operator itself, not in the operators it
calls), divided by the N + 1 steps run, is put in one category:

* `convolution`: mkldnn/oneDNN convolutions and their backward;
* `GEMM`: mm / addmm / bmm / linear;
* `data movement`: copies, transposes, concatenations, views made contiguous, indexing;
* `elementwise / reductions`: everything else the autograd graph runs (activations, losses, sums);
* `optimiser`: Adam's update (foreach or not).

Shares are of the summed self time (the profiler's own overhead included, which inflates many small
operators). Convolution and GEMM rates are their FLOPs (the profiler's count) over their time, next
to torch's 2048² matmul rate measured in the same process.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import time
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path

from _categories import category_table


def categorise(name: str) -> str:
    n = name.lower()
    if "adam" in n or "_foreach" in n or "optimizer" in n:
        return "optimiser"
    if "conv" in n:
        return "convolution"
    if any(k in n for k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")):
        return "GEMM"
    if any(k in n for k in ("copy", "transpose", "cat", "contiguous", "index", "clone", "permute", "stack", "pad")):
        return "data movement"
    return "elementwise / reductions"


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n)
    a @ a
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e9


def profile(harness: Path, config: str, steps: int, threads: int) -> dict:
    import torch  # the reference environment's, not this package's (imported here so --help needs none)

    spec = importlib.util.spec_from_file_location("ref_step", harness)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.argv = ["ref_step.py", "--config", config, "--steps", str(steps), "--warmup", "1", "--threads", str(threads)]
    torch.set_num_threads(threads)
    matmul = matmul_gflops()
    printed = io.StringIO()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        with redirect_stdout(printed):
            module.main()
    timing = json.loads(printed.getvalue().strip().splitlines()[-1])
    runs = steps + 1
    rows: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "flops": 0.0, "ops": 0})
    ops = []
    for event in prof.key_averages():
        if event.key.startswith(("autograd::engine", "ProfilerStep", "[memory]")):
            continue
        seconds = event.self_cpu_time_total / 1e6 / runs
        flops = (event.flops or 0) / runs
        category = categorise(event.key)
        rows[category]["seconds"] += seconds
        rows[category]["flops"] += flops
        rows[category]["ops"] += 1
        ops.append(
            {"op": event.key, "category": category, "calls": event.count / runs, "seconds": seconds, "flops": flops}
        )
    table, total = category_table(rows, matmul, "ops")
    ops.sort(key=lambda o: -o["seconds"])
    return {
        "config": config,
        "step_wall_s_unprofiled_harness": timing["per_step_s"],
        "self_s": total,
        "matmul_gflops_per_s": matmul,
        "torch": torch.__version__,
        "threads": threads,
        "categories": table,
        "ops": ops,
    }


def _print(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else ("—" if v is None else str(v))

    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness", type=Path, required=True, help="the shared ref_step.py")
    parser.add_argument("--configs", nargs="+", default=["quick", "c", "b", "a"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = []
    for config in args.configs:
        result = profile(args.harness, config, args.steps, args.threads)
        out.append(result)
        print(
            f"\n({config}) the harness's step {result['step_wall_s_unprofiled_harness']:.3f} s (under the profiler), "
            f"{result['self_s']:.3f} s of operators' self time; 2048² matmul {result['matmul_gflops_per_s']:.0f} GFLOP/s"
        )
        _print(result["categories"], list(result["categories"][0]))
        _print(result["ops"][: args.top], ["op", "category", "calls", "seconds", "flops"])
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
