"""Build this folder's summary.json and table.md from the runs of run.sh (one eval.json per run).

python results/weak-supervision/collect.py runs/issue18
"""

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(runs: Path) -> None:
    walls = {(r["model"], r["seed"]): r for r in map(json.loads, (runs / "walls.jsonl").read_text().splitlines())}
    seeds = sorted({seed for _, seed in walls})
    rows, summary = [], {"runs": {}}
    for seed in seeds:
        sup = json.loads((runs / f"ffvae-seed{seed}" / "eval.json").read_text())
        weak = json.loads((runs / f"ffvae-weak-seed{seed}" / "eval.json").read_text())
        for model in ("ffvae", "ffvae-weak"):
            out = HERE / "runs" / f"{model}-seed{seed}"
            out.mkdir(parents=True, exist_ok=True)
            for name in ("eval.json", "config.json"):
                shutil.copy(runs / f"{model}-seed{seed}" / name, out / name)
            usage = runs / f"{model}-seed{seed}" / "figures" / "flow_usage.png"
            if usage.exists():
                shutil.copy(usage, out / "flow_usage.png")
        fa = weak["flow_assignment"]
        names = list(sup["transformations"])
        ratios = {
            t: weak["transformations"][t]["equivariance_error"] / sup["transformations"][t]["equivariance_error"]
            for t in names
        }
        w_wall, s_wall = walls[("ffvae-weak", seed)]["wall_s"], walls[("ffvae", seed)]["wall_s"]
        summary["runs"][seed] = {
            "accuracy": fa["accuracy"],
            "usage": fa["usage"],
            "matching": fa["matching"],
            "confusion": fa["confusion"],
            "equivariance_error": {
                t: {
                    "weak": weak["transformations"][t]["equivariance_error"],
                    "supervised": sup["transformations"][t]["equivariance_error"],
                    "ratio": ratios[t],
                }
                for t in names
            },
            "log_likelihood": {"weak": weak["log_likelihood"], "supervised": sup["log_likelihood"]},
            "wall_s": {"weak": w_wall, "supervised": s_wall, "ratio": w_wall / s_wall},
        }
        e = " | ".join(
            f"{weak['transformations'][t]['equivariance_error']:.0f} / {sup['transformations'][t]['equivariance_error']:.0f}"
            f" ({100 * (ratios[t] - 1):+.1f}%)"
            for t in names
        )
        rows.append(
            f"| {seed} | {fa['accuracy']:.3f} | {' / '.join(f'{u:.2f}' for u in fa['usage'])} | {e} | "
            f"{weak['log_likelihood']:.1f} / {sup['log_likelihood']:.1f} | {w_wall:.0f} / {s_wall:.0f} s "
            f"({w_wall / s_wall:.2f}×) |"
        )
    head = (
        "| seed | matched accuracy | flow usage | "
        + " | ".join(f"E {t}: weak / sup." for t in names)
        + " | log p(x): weak / sup. | wall time: weak / sup. |"
    )
    table = "\n".join([head, "|" + "---|" * (len(names) + 5), *rows]) + "\n"
    (HERE / "table.md").write_text(table)
    (HERE / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
