"""What a comparison table cost to train: the training loop's hours per method, from the records
`compare --results` keeps (grid points and runs), nothing retrained.

    python benchmarks/table_cost.py --results results/mnist --out runs/compare-mnist-medium \
        --json results/mnist/cost.json

A record written by `compare` since `training_seconds` exists gives the loop's wall time over every
invocation of the run (`records.training_seconds`: stepping, data and checkpoints; compilation and
evaluation left out). For an older record the same sum is taken over the run's metrics.jsonl where
its run directory is still under one of `--out` (`<out>/<method>/lr<rate>/seed<i>`); otherwise only
its last 100 steps' throughput is left, its time is estimated as steps × batch / that mean rate, and
it is counted under `estimated` (the estimate is off wherever the machine's load changed). A run that is seed 0 of a grid method is
the grid point itself, so it is counted once (under `grid`). The hours are wall hours of the process
that trained the run; how many cores it held is the record's setting (`execution.json`, where a
table has one). With one, the hours are also summed per setting, and `--parallel SETTING=N` (records
of SETTING trained in N processes side by side) turns them into the table's wall hours:
Σ_setting hours / N.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _util import print_table, write_json

from eqx_ffvae import runs


def _hours(summary: dict, batch_size: int, run_dirs: list[Path]) -> tuple[float, bool]:
    """(hours, estimated) of one run from its metrics summary, or its metrics.jsonl in `run_dirs`."""
    if "training_seconds" in summary:
        return summary["training_seconds"] / 3600, False
    for run_dir in run_dirs:
        records = runs.read_metrics(run_dir / "metrics.jsonl")
        if records and records[-1]["step"] == summary["final_step"]:
            return records.training_seconds(records, batch_size) / 3600, False
    rate = next(v["sequences_per_s"] for k, v in summary.items() if k.startswith("mean_of_last_"))
    return summary["final_step"] * batch_size / rate / 3600, True


def record_hours(results: Path, outs: list[Path]) -> list[dict]:
    """One entry per record `compare` kept: its key in execution.json (`<method>/seed<i>` for a run,
    `grid/<method>/lr<rate>` for a grid point), method, column (`grid_h` or `runs_h`), hours and
    whether they are estimated."""
    if not (results / "runs").is_dir() and not (results / "grid").is_dir():
        raise SystemExit(f"{results} holds no grid/ or runs/ records; pass the folder `compare --results` wrote")
    entries = []

    def add(method: str, column: str, summary: dict, batch_size: int, lr: float, seed: str) -> None:
        hours, estimated = _hours(summary, batch_size, [out / method / f"lr{lr:g}" / seed for out in outs])
        key = f"{method}/{seed}" if column == "runs_h" else f"grid/{method}/lr{lr:g}"
        entries.append({"key": key, "method": method, "column": column, "hours": hours, "estimated": estimated})

    for path in sorted((results / "grid").glob("*/*.json")):
        record = json.loads(path.read_text())
        identity = record["identity"]
        add(
            path.parent.name,
            "grid_h",
            record["metrics_summary"],
            identity["batch_size"],
            identity["learning_rate"],
            "seed0",
        )
    gridded = {path.parent.name for path in (results / "grid").glob("*/*.json")}
    for path in sorted((results / "runs").glob("*/seed*/metrics_summary.json")):
        method, seed = path.parent.parent.name, path.parent.name
        if seed == "seed0" and method in gridded:
            continue
        config = json.loads((path.parent / "config.json").read_text())
        summary = json.loads(path.read_text())
        add(method, "runs_h", summary, config["batch_size"], config["learning_rate"], seed)
    return entries


def table_cost(entries: list[dict]) -> list[dict]:
    """One row per method: its grid points' and further runs' training hours, most expensive first."""
    rows: dict[str, dict] = {}
    for e in entries:
        r = rows.setdefault(
            e["method"], {"method": e["method"], "grid_h": 0.0, "runs_h": 0.0, "records": 0, "estimated": 0}
        )
        r[e["column"]] += e["hours"]
        r["records"] += 1
        r["estimated"] += e["estimated"]
    for r in rows.values():
        r["total_h"] = r["grid_h"] + r["runs_h"]
    return sorted(rows.values(), key=lambda r: -r["total_h"])


def by_setting(entries: list[dict], execution: dict, parallel: dict[str, int]) -> list[dict]:
    """Hours per execution setting of `execution.json`, and the wall hours they took side by side."""
    settings: dict[str, dict] = {}
    for e in entries:
        if e["key"] not in execution["records"]:
            raise SystemExit(f"record {e['key']} has no setting in execution.json; add it there")
        name = execution["records"][e["key"]]
        s = settings.setdefault(name, {"setting": name, "hours": 0.0, "records": 0, "processes": parallel.get(name, 1)})
        s["hours"] += e["hours"]
        s["records"] += 1
    unknown = set(parallel) - set(settings)
    if unknown:
        raise SystemExit(f"--parallel names {sorted(unknown)}, not a setting of any record ({sorted(settings)})")
    for s in settings.values():
        s["wall_h"] = s["hours"] / s["processes"]
    return sorted(settings.values(), key=lambda s: s["setting"])


def _parallel(text: str) -> tuple[str, int]:
    name, _, n = text.partition("=")
    if not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"--parallel {text!r}: expected SETTING=N with N ≥ 1, e.g. one-thread=2")
    return name, int(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a folder `compare --results` wrote")
    parser.add_argument("--out", type=Path, nargs="*", default=[], help="`compare --out` folders still on disk")
    parser.add_argument("--json", default=None, help="write the rows (and the total) here")
    parser.add_argument(
        "--parallel",
        type=_parallel,
        nargs="*",
        default=[],
        help="SETTING=N: execution.json's records of SETTING trained in N processes side by side",
    )
    args = parser.parse_args()
    entries = record_hours(args.results, args.out)
    rows = table_cost(entries)
    total = {
        "method": "total",
        **{k: sum(r[k] for r in rows) for k in ("grid_h", "runs_h", "records", "estimated", "total_h")},
    }
    print_table([*rows, total], ["method", "grid_h", "runs_h", "total_h", "records", "estimated"])
    execution_path = args.results / "execution.json"
    settings = []
    if execution_path.exists():
        settings = by_setting(entries, json.loads(execution_path.read_text()), dict(args.parallel))
        wall = {"setting": "total", **{k: sum(s[k] for s in settings) for k in ("hours", "records", "wall_h")}}
        print()
        print_table([*settings, {**wall, "processes": ""}], ["setting", "hours", "records", "processes", "wall_h"])
    write_json({"methods": [*rows, total], "settings": settings}, args.json)


if __name__ == "__main__":
    main()
