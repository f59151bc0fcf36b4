"""Old and new verdicts of a table's claims, and what changed each one (issue 42's closing note).

    python results/second-edition/verdicts.py mnist [--first COMMIT] [--restated COMMIT] [--second PATH]

Three readings of one table's claims:
* **first edition**: claims.json as committed at `--first` (the first edition's records and
  statistics: a percentile bootstrap over seeds, no correction for multiplicity);
* **restated**: the same records judged with the second edition's statistics (seed-level
  t-interval, Holm over a claim's comparisons), claims.json at `--restated`;
* **second edition**: claims.json in `--second` (default results/<table>, once its records are the
  second edition's): three seeds on every row, log p(x) at S = 100 with the estimator's drift, the
  changed-pixel measure where raw E_k does not discriminate.

A change from the first reading to the second is the statistics'; from the second to the third, the
records': a row whose seed count changed ("seeds"), a log p(x) row ("estimator"), a column marked
not discriminating ("measure"), otherwise the same seeds retrained under the new protocol ("records").
Writes `<second>/verdicts.md` and prints it.
"""

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST = {"mnist": "870d52a", "shapes3d": "3142e02"}
RESTATED = {"mnist": "2e8b198", "shapes3d": "2e8b198"}


def committed(commit: str, path: str) -> dict:
    return json.loads(
        subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True, capture_output=True, text=True
        ).stdout
    )


def rows(claims: dict) -> dict:
    found = {}
    for name, claim in claims["claims"].items():
        for row in claim["rows"]:
            found[(name, row["a"], row["b"], row["column"])] = row
    return found


def why(key: tuple, first: dict, second: dict) -> str:
    _, a, b, column = key
    reasons = []
    if any(first["seeds"].get(m) != second["seeds"].get(m) for m in (a, b)):
        reasons.append("seeds")
    if column == "log_likelihood":
        reasons.append("estimator")
    if column in second.get("not_discriminating", {}):
        reasons.append("measure")
    return ", ".join(reasons) or "records"


def cell(row: dict | None) -> str:
    if row is None:
        return "—"
    if row.get("ci95") is None:
        return row["verdict"]
    low, high = row["ci95"]
    return f"{row['verdict']} ({row['difference']:+.1f} [{low:+.1f}, {high:+.1f}])"


def report(table: str, first: dict, restated: dict, second: dict) -> str:
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
            changes.append("statistics")
        if verdicts[1] != verdicts[2]:
            changes.append(why(key, restated, second))
        name, a, b, column = key
        lines.append(
            f"| {name} | {a} − {b}, {column} | {cell(old)} | {cell(mid)} | {cell(row)} | {'; '.join(changes)} |"
        )
    return "\n".join(lines) + "\n"


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
    text = report(args.table, first, restated, second)
    (second_dir / "verdicts.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
