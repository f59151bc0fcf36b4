"""Where the FFVAE training step's time goes on this CPU: XLA:CPU's own per-thunk profile of the compiled step.

    python benchmarks/profile_step.py [--configs quick c b a] [--steps 3] [--json PATH]

For each configuration of `benchmarks/step.py` (the same model, batch and compiled step), `--steps`
steps run under `jax.profiler.trace` (a Perfetto trace; XLA:CPU records each thunk it executes: a
GEMM, a fused loop, a copy, a loop's body…). Every leaf thunk (loops and the executor's own spans
left out, so nothing is counted twice) is put in one category by its HLO instruction in the compiled
module (`compiled.as_text()`):

* `GEMM (dot)`: XLA's own dot thunks (Eigen), `GEMM (XNNPACK fusion)`: dots XLA:CPU fused and hands
  to XNNPACK (`ynn_fusion…`, possibly with elementwise work around them); their FLOPs are 2·M·N·K
  from the instruction's shapes, so the category's achieved GFLOP/s is comparable with the 2048²
  matmul rate measured in the same process (`matmul_gflops_per_s`);
* `data movement`: copies, transposes, concatenations, pads, slices, gathers and scatters;
* `elementwise / reductions`: the other fusions (loops, reductions, the optimiser's update);
* `other`: everything else, named in the JSON.

Thunk times are summed over threads (XLA:CPU may run independent thunks side by side and XNNPACK
splits a GEMM over the pool), so `thunk_s` can exceed the step's wall time; the shares are of
`thunk_s`. Prints one table per configuration and the top thunks; writes JSON with every thunk.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _categories import category_table
from _util import print_table
from step import CONFIGS, build, matmul_gflops

_DEF = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)\[([\d,]*)\]\S* (\w[\w-]*)\((.*)$")
_CALLS = re.compile(r"calls=%([\w.-]+)")
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_COMPUTATION = re.compile(r"^%([\w.-]+) \(")
_CONTAINERS = ("while", "conditional", "call")
_MOVEMENT = ("copy", "transpose", "concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
             "gather", "scatter", "bitcast", "broadcast", "reshape")  # fmt: skip


def _dims(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_hlo(text: str) -> dict[str, dict]:
    """Every instruction of an HLO module's text: name → {"op", "shape", "flops" (dots: 2·M·N·K),
    "calls" (the computation a fusion calls)}; and each computation's instruction names under
    "__computations__"."""
    shapes: dict[str, list[int]] = {}
    instructions: dict[str, dict] = {}
    computations: dict[str, list[str]] = defaultdict(list)
    current = ""
    for line in text.splitlines():
        head = _COMPUTATION.match(line) or (re.match(r"^ENTRY %([\w.-]+)", line))
        if head:
            current = head.group(1)
            continue
        m = _DEF.match(line)
        if not m:
            continue
        name, _, dims, op, rest = m.groups()
        shapes[name] = _dims(dims)
        operands = re.findall(r"%([\w.-]+)", rest.split(")", 1)[0])
        calls = _CALLS.search(rest)
        instructions[name] = {"op": op, "operands": operands, "calls": calls.group(1) if calls else None}
        computations[current].append(name)
    for name, ins in instructions.items():
        ins["flops"] = 0.0
        if ins["op"] == "dot":
            contract = _CONTRACT.search(_line_of(text, name))
            lhs = shapes.get(ins["operands"][0], [])
            k = 1
            for i in _dims(contract.group(1)) if contract else []:
                k *= lhs[i]
            out = 1
            for v in shapes[name]:
                out *= v
            ins["flops"] = 2.0 * out * k
    return {"instructions": instructions, "computations": dict(computations)}


def _line_of(text: str, name: str) -> str:
    match = re.search(rf"^\s*(?:ROOT )?%{re.escape(name)} = .*$", text, flags=re.M)
    return match.group(0) if match else ""


def categorise(name: str, module: dict) -> tuple[str, float]:
    """(category, FLOPs) of the thunk named `name` (an HLO instruction of the module)."""
    ins = module["instructions"].get(name)
    if ins is None:
        return "other", 0.0
    op = ins["op"]
    if op == "dot":
        return "GEMM (dot)", ins["flops"]
    if op == "fusion" and ins["calls"]:
        inner = [module["instructions"][n] for n in module["computations"].get(ins["calls"], [])]
        flops = sum(i["flops"] for i in inner)
        if flops:
            return ("GEMM (XNNPACK fusion)" if name.startswith("ynn") else "GEMM (fusion)"), flops
        if all(i["op"] in _MOVEMENT or i["op"] == "parameter" for i in inner):
            return "data movement", 0.0
        return "elementwise / reductions", 0.0
    if op in _MOVEMENT:
        return "data movement", 0.0
    if op in ("convolution",):
        return "convolution", 0.0
    return f"other ({op})", 0.0


def profile(config: str, steps: int, laplacian: str = "exact") -> dict:
    import jax
    import jax.random as jr

    built = build(config, laplacian)
    compiled = built["compiled"]
    module = parse_hlo(getattr(compiled, "compiled", compiled).as_text())
    model, opt_state, data = built["model"], built["opt_state"], built["data"]
    matmul = matmul_gflops()
    walls = []
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for i in range(steps):
                start = time.perf_counter()
                model, opt_state, loss, _ = compiled(model, opt_state, data, jr.key(10 + i))
                jax.block_until_ready(loss)
                walls.append(time.perf_counter() - start)
        (trace,) = Path(folder).rglob("*.trace.json.gz")
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_thunk: dict[str, float] = defaultdict(float)
    runs: dict[str, int] = defaultdict(int)
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name not in module["instructions"]:
            continue
        if module["instructions"][name]["op"] in _CONTAINERS:
            continue
        per_thunk[name] += e.get("dur", 0.0) / 1e6 / steps
        runs[name] += 1
    rows: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "flops": 0.0, "thunks": 0})
    thunks = []
    for name, seconds in per_thunk.items():
        category, flops = categorise(name, module)
        flops *= runs[name] / steps  # a thunk inside a loop runs once per iteration
        rows[category]["seconds"] += seconds
        rows[category]["flops"] += flops
        rows[category]["thunks"] += 1
        thunks.append(
            {"thunk": name, "category": category, "runs": runs[name] / steps, "seconds": seconds, "flops": flops}
        )
    table, total = category_table(rows, matmul, "thunks")
    thunks.sort(key=lambda t: -t["seconds"])
    return {
        "config": config,
        "laplacian": laplacian,
        "step_wall_s": statistics.median(walls),
        "thunk_s": total,
        "matmul_gflops_per_s": matmul,
        "categories": table,
        "thunks": thunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["quick", "c", "b", "a"], choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=8, help="thunks listed per configuration")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = []
    for config in args.configs:
        result = profile(config, args.steps)
        out.append(result)
        print(
            f"\n({config}) step {result['step_wall_s']:.3f} s wall, {result['thunk_s']:.3f} s of thunks; "
            f"2048² matmul {result['matmul_gflops_per_s']:.0f} GFLOP/s"
        )
        print_table(result["categories"], list(result["categories"][0]))
        print_table(result["thunks"][: args.top], ["thunk", "category", "runs", "seconds", "flops"])
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
