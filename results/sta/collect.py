"""Issue 45's results: STA's records next to the weak and supervised FFVAE's, their table and claims.

    python results/sta/collect.py [--store /work/res45]

Copies each finished STA record (`runs/sta/seed<i>/`: eval.json, config.json, metrics_summary.json) and
the learning-rate grid from the record stores of `compare --models sta --dataset mnist-single|double
--results STORE/single|double` into `single/` and `double/` here. Then, per setting, writes
compare.json / compare.md (`reporting.table`: STA's rows, and on `single/` the FFVAE's and the weak
FFVAE's second-edition records at the same preset and seeds, read from results/second-edition/mnist)
and claims.json / claims.md (`reporting.claim_sets.STA_CLAIMS`: STA's E_k against each, with seed-level
intervals). Every row scores the same held-out single-transformation MNIST sequences.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from eqx_ffvae.reporting.claims import assess, load_records
from eqx_ffvae.reporting.claims_text import to_markdown as claims_markdown
from eqx_ffvae.reporting.table import summarise, to_markdown

HERE = Path(__file__).resolve().parent
SECOND_EDITION = HERE.parent / "second-edition" / "mnist"
FFVAE_ROWS = ("ffvae", "ffvae-weak")


def copy_records(store: Path, table: Path) -> None:
    for record in sorted(store.glob("runs/sta/seed*/eval.json")):
        folder = record.parent
        if not folder.name.removeprefix("seed").isdigit():
            continue
        target = table / "runs" / "sta" / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics_summary.json", "eval.json"):
            shutil.copy2(folder / name, target / name)
    if (store / "grid").is_dir():
        shutil.copytree(store / "grid", table / "grid", dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))


def render(table: Path) -> None:
    records = load_records(table)
    if "sta" not in records:
        return
    seeds = len(records["sta"])
    if table.name == "single" and (SECOND_EDITION / "runs").is_dir():
        others = load_records(SECOND_EDITION)
        records.update({name: others[name][:seeds] for name in FFVAE_ROWS if name in others})
    results = {name: records[name] for name in (*FFVAE_ROWS, "sta") if name in records}
    rows = summarise(results)
    names = list(results["sta"][0]["transformations"])
    header = (
        f"# STA on {results['sta'][0]['dataset']} (issue 45), mnist-medium\n\n"
        "Written by `python results/sta/collect.py`. E_k, flow assignment and log p(x): the single-transformation "
        "MNIST test sequences (every row the same ones); STA follows the controls it reads off each sequence. "
        "Sparse controls: STA on its own composed test sequences. Rows: "
        + ", ".join(f"{r['label']} ({r['seeds']} seeds)" for r in rows.values())
    )
    (table / "compare.json").write_text(json.dumps({"methods": rows}, indent=2))
    (table / "compare.md").write_text(to_markdown(rows, results, names, header))
    assessment = assess(records, claims=())
    assessment.update(ablations={}, ablation_places_not_measured=[])  # no FFVAE ablations here
    (table / "claims.json").write_text(json.dumps(assessment, indent=2))
    text = claims_markdown(assessment, "# STA against the weak and supervised FFVAE (issue 45)\n")
    (table / "claims.md").write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("/work/res45"))
    args = parser.parse_args()
    for setting in ("single", "double"):
        table = HERE / setting
        if (args.store / setting).is_dir():
            copy_records(args.store / setting, table)
        if (table / "runs").is_dir():
            render(table)
            print((table / "compare.md").read_text())
