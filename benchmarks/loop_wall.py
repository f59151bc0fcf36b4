"""The real training loop's wall time per step, measured the same way on any commit of the package.

    python benchmarks/loop_wall.py --steps 400 [--preset quick] [--set frames_on=device] [--json PATH]
    PYTHONPATH=../old python benchmarks/loop_wall.py --steps 400 --label ef2a7c7   # another commit

Runs `runs.TrainingRun` (data, step, logging, checkpoints) in a temporary directory and stamps every
`StepRecord` as the loop yields it: `ms_per_step` is the wall time from step 10 to the last step,
divided by the steps between (checkpoints included), `median_gap_ms` the median time between two
records, `top_gaps_ms` the five longest. Only `runs.resolve`, `TrainingRun` and `StepRecord` are used,
which every commit since the run-directory issue has, so pairs of commits can be timed in turns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _util import print_table, write_json

from eqx_ffvae import runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="runs.resolve overrides")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.steps <= 20:
        parser.error(f"--steps {args.steps}: time at least 21 steps (the first 10 are left out)")
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            overrides[name] = json.loads(value)  # numbers and booleans
        except ValueError:
            overrides[name] = value  # anything else is a string (frames_on=host)
    spec = runs.resolve(args.preset, steps=args.steps, **overrides)
    stamps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as root:
        for event in runs.TrainingRun(spec, Path(root) / "run"):
            if isinstance(event, runs.StepRecord):
                stamps[event.step] = time.perf_counter()
    gaps = sorted((stamps[s] - stamps[s - 1]) * 1e3 for s in range(11, args.steps + 1))
    row = {
        "label": args.label,
        "preset": args.preset,
        "overrides": " ".join(args.set) or "-",
        "steps": args.steps,
        "ms_per_step": (stamps[args.steps] - stamps[10]) / (args.steps - 10) * 1e3,
        "median_gap_ms": statistics.median(gaps),
        "top_gaps_ms": [round(g) for g in gaps[-5:][::-1]],
    }
    print_table([row], list(row))
    write_json([row], args.json)


if __name__ == "__main__":
    main()
