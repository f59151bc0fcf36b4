"""Copy the second edition's finished records from a record store into this folder, and list them.

    python results/second-edition/collect.py STORE/mnist [STORE/shapes3d ...]

A record is the second edition's when its eval.json carries `likelihood_drift` (the protocol of
ecb88b7); the store's other records (the first edition's, still to be superseded) are left alone.
Copies `runs/<method>/seed<i>/` (eval.json, config.json, metrics_summary.json) and the store's
`grid/` into `<table>/`, and rewrites landed.md: per table and method, the seeds landed.
"""

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def collect(store: Path) -> None:
    table = HERE / store.name
    for record in sorted(store.glob("runs/*/seed*/eval.json")):
        folder = record.parent
        if not folder.name.removeprefix("seed").isdigit() or "likelihood_drift" not in json.loads(record.read_text()):
            continue
        target = table / "runs" / folder.parent.name / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics_summary.json", "eval.json"):
            shutil.copy2(folder / name, target / name)
    if (store / "grid").is_dir():
        shutil.copytree(store / "grid", table / "grid", dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))


def landed() -> str:
    lines = ["| table | method | seeds landed (second edition) |", "|---|---|---|"]
    for table in sorted(p for p in HERE.iterdir() if (p / "runs").is_dir()):
        for method in sorted(p for p in (table / "runs").iterdir() if p.is_dir()):
            seeds = sorted(int(p.name.removeprefix("seed")) for p in method.glob("seed*") if (p / "eval.json").exists())
            lines.append(f"| {table.name} | {method.name} | {', '.join(map(str, seeds))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        collect(Path(arg))
    (HERE / "landed.md").write_text(landed())
    print(landed())
