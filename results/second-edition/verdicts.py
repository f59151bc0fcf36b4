"""Old and new verdicts of a table's claims, and what changed each one (issue 42's closing note).

    python results/second-edition/verdicts.py mnist [--first COMMIT] [--restated COMMIT] [--second PATH]

Three readings of one table's claims:
* **first edition**: claims.json as committed at `--first` (the first edition's records and
  statistics: a percentile bootstrap over seeds, no correction for multiplicity);
* **restated**: the same records judged with the second edition's statistics (seed-level
  t-interval, Holm over a claim's comparisons, no verdict where a comparison does not discriminate),
  claims.json at `--restated` (for Shapes3D the commit that added the rule for one comparison whose two
  methods both sit at their identity floor; no MNIST comparison is affected by it);
* **second edition**: claims.json in `--second` (default results/<table>, once its records are the
  second edition's): three seeds on every row, log p(x) at S = 100 with the estimator's drift, the
  changed-pixel measure where raw E_k does not discriminate.

A change from the first reading to the second is the statistics' ("measure" where the comparison became
not discriminating); from the second to the third, the records': a row whose seed count changed
("seeds"), a log p(x) row ("estimator"), a comparison not discriminating ("measure"), otherwise the same
seeds retrained under the new protocol ("records").
How much of "records" is the retraining itself: every (method, seed) both editions have, its E_k
in the first edition's record (at `--first`) and in the second's (`<second>/runs`), the relative change
per transformation, beside the second edition's spread between seeds (its coefficient of variation).
Log p(x) is left out there: the editions score it on different sequences at different S.
Writes `<second>/verdicts.md` and prints it.
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIRST = {"mnist": "870d52a", "shapes3d": "3142e02"}
RESTATED = {"mnist": "2e8b198", "shapes3d": "b312a8a"}


def committed(commit: str, path: str) -> dict:
    return json.loads(
        subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True, capture_output=True, text=True
        ).stdout
    )


def committed_records(commit: str, table: str) -> dict[tuple[str, str], dict]:
    """Every (method, seed) record's eval.json under results/<table>/runs at `commit`."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", commit, f"results/{table}/runs"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {tuple(path.split("/")[-3:-1]): committed(commit, path) for path in listed if path.endswith("/eval.json")}


def equivariance(record: dict) -> dict[str, float]:
    return {k: v["equivariance_error"] for k, v in record["transformations"].items()}


def retrained(first: dict[tuple[str, str], dict], runs: Path) -> list[str]:
    """The same seeds in both editions: E_k's relative change, against the second edition's seed spread."""
    second = {
        (path.parts[-3], path.parts[-2]): json.loads(path.read_text())
        for path in sorted(runs.glob("*/seed*/eval.json"))
    }
    changes, lines = [], []
    for method in sorted({m for m, _ in second}):
        seeds = sorted(s for m, s in second if m == method)
        spread = np.array([list(equivariance(second[method, s]).values()) for s in seeds])
        cv = spread.std(0, ddof=1) / spread.mean(0) if len(seeds) > 1 else None
        both = [s for s in seeds if (method, s) in first]
        if not both:
            continue
        rel = {
            s: {k: v / equivariance(first[method, s])[k] - 1 for k, v in equivariance(second[method, s]).items()}
            for s in both
        }
        changes += [abs(r) for per in rel.values() for r in per.values()]
        cells = "; ".join(f"{s}: " + " / ".join(f"{100 * r:+.1f}%" for r in per.values()) for s, per in rel.items())
        cv_cell = "—" if cv is None else " / ".join(f"{100 * c:.1f}%" for c in cv)
        lines.append(f"| {method} | {cells} | {cv_cell} |")
    head = [
        "",
        "The same seeds retrained (E_k, second edition / first − 1, per transformation; beside it the second",
        "edition's coefficient of variation between seeds):",
        "",
        "| method | seed: change per transformation | between seeds (CV) |",
        "|---|---|---|",
    ]
    if not changes:
        return []
    tail = [
        "",
        f"Over {len(changes)} (record, transformation) pairs: median |change| {100 * np.median(changes):.1f}%, "
        f"largest {100 * max(changes):.1f}%.",
    ]
    return head + lines + tail


def rows(claims: dict) -> dict:
    found = {}
    for name, claim in claims["claims"].items():
        for row in claim["rows"]:
            found[(name, row["a"], row["b"], row["column"])] = row
    return found


def why(key: tuple, first: dict, second: dict, row: dict) -> str:
    """What changed `row` (the second edition's comparison `key`) from the `first` reading."""
    _, a, b, column = key
    reasons = []
    if any(first["seeds"].get(m) != second["seeds"].get(m) for m in (a, b)):
        reasons.append("seeds")
    if column == "log_likelihood":
        reasons.append("estimator")
    if row.get("not_discriminating"):  # a whole column's rows carry the mark too
        reasons.append("measure")
    return ", ".join(reasons) or "records"


def cell(row: dict | None) -> str:
    if row is None:
        return "—"
    if row.get("ci95") is None:
        return row["verdict"]
    low, high = row["ci95"]
    return f"{row['verdict']} ({row['difference']:+.1f} [{low:+.1f}, {high:+.1f}])"


def report(table: str, first: dict, restated: dict, second: dict, same_seeds: list[str]) -> str:
    lines = [
        f"# {table}: the claims' verdicts, first edition → second edition",
        "",
        "| claim | first edition | first-edition records, new statistics | second edition | changed by |",
        "|---|---|---|---|---|",
    ]
    for name, claim in second["claims"].items():
        old, mid = (
            first["claims"].get(name, {}).get("verdict", "—"),
            restated["claims"].get(name, {}).get("verdict", "—"),
        )
        changes = [
            label for label, changed in (("statistics", old != mid), ("records", mid != claim["verdict"])) if changed
        ]
        lines.append(f"| {name} | {old} | {mid} | {claim['verdict']} | {', '.join(changes) or 'unchanged'} |")
    lines += [
        "",
        "Comparisons whose verdict changed (difference a − b and its 95% interval as each edition prints it):",
        "",
        "| claim | a − b, column | first edition | new statistics | second edition | changed by |",
        "|---|---|---|---|---|---|",
    ]
    old_rows, mid_rows = rows(first), rows(restated)
    for key, row in rows(second).items():
        old, mid = old_rows.get(key), mid_rows.get(key)
        verdicts = [r["verdict"] if r else None for r in (old, mid, row)]
        if len(set(verdicts)) == 1:
            continue
        changes = []
        if verdicts[0] != verdicts[1]:
            changes.append("measure" if verdicts[1] == "not discriminating" else "statistics")
        if verdicts[1] != verdicts[2]:
            changes.append(why(key, restated, second, row))
        name, a, b, column = key
        lines.append(
            f"| {name} | {a} − {b}, {column} | {cell(old)} | {cell(mid)} | {cell(row)} | {'; '.join(changes)} |"
        )
    return "\n".join(lines + same_seeds) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(FIRST))
    parser.add_argument("--first", help="commit of the first edition's claims.json")
    parser.add_argument("--restated", help="commit of the first edition's records judged with the new statistics")
    parser.add_argument("--second", type=Path, help="folder of the second edition's claims.json")
    args = parser.parse_args()
    path = f"results/{args.table}/claims.json"
    second_dir = args.second or ROOT / "results" / args.table
    first = committed(args.first or FIRST[args.table], path)
    restated = committed(args.restated or RESTATED[args.table], path)
    second = json.loads((second_dir / "claims.json").read_text())
    first_commit = args.first or FIRST[args.table]
    same_seeds = retrained(committed_records(first_commit, args.table), second_dir / "runs")
    text = report(args.table, first, restated, second, same_seeds)
    (second_dir / "verdicts.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
