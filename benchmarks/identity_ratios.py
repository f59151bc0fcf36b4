"""Which columns of a table measure equivariance: every method's E_k over its own identity score
(z_t = μ(x_0), no transformation), over every pixel and over the pixels that change between x_0 and
x_t, read from a comparison's compare.json (`equivariance_ratio/<t>` and
`equivariance_ratio_changed/<t>`, each the mean over seeds of the per-seed ratio).

A cell at `DISCRIMINATION` (0.9) or above ranks first-frame reconstruction, not equivariance
(docs/method.md §5): the figure draws those cells hatched. (`claims` applies the rule to the ratio of
the seed means, `claims.identity_ratios`; on Table 2 the two differ by at most 0.02 and put the same
cells at or above 0.9.) Prints the table, writes it as Markdown,
the figure as PNG and the numbers as JSON:

    python benchmarks/identity_ratios.py --compare results/shapes3d/compare.json \\
        --out results/shapes3d/identity_ratios
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from eqx_ffvae.reporting.claim_sets import DISCRIMINATION

MEASURES = {"equivariance_ratio": "every pixel", "equivariance_ratio_changed": "changed pixels"}


def ratios(compare: dict) -> dict:
    """{"methods": labels, "transformations": names, measure: methods × transformations of means}.

    Raises ValueError naming the method and column when compare.json lacks a ratio column (a table
    made before the ratios existed: rerun `compare` on its records)."""
    methods = compare["methods"]
    names = [c.split("/", 1)[1] for c in next(iter(methods.values()))["columns"] if c.startswith("equivariance_ratio/")]
    if not names:
        raise ValueError(
            "compare.json has no equivariance_ratio/<t> columns (made before the identity ratios existed): "
            "rerun `compare` on its records at this commit"
        )
    out: dict = {"methods": [m["label"] for m in methods.values()], "transformations": names}
    for measure in MEASURES:
        rows = []
        for key, m in methods.items():
            row = []
            for t in names:
                column = m["columns"].get(f"{measure}/{t}")
                if column is None:
                    raise ValueError(
                        f"compare.json has no column {measure}/{t} for method {key!r}: rerun `compare` on the records "
                        "at this commit to add it"
                    )
                row.append(float(column["mean"]))
            rows.append(row)
        out[measure] = rows
    return out


def markdown(table: dict) -> str:
    """One row per method, 'every pixel / changed pixels' per transformation, two decimals."""
    names = table["transformations"]
    lines = [
        "| method | " + " | ".join(t.replace("_", " ") for t in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for i, label in enumerate(table["methods"]):
        cells = [
            f"{a:.2f} / {b:.2f}" for a, b in zip(table["equivariance_ratio"][i], table["equivariance_ratio_changed"][i])
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(table: dict, path: Path) -> None:
    """Two heat maps side by side (every pixel, changed pixels), log colour scale centred on 1, cells at
    `DISCRIMINATION` or above hatched, each cell labelled with its ratio."""
    names, labels = table["transformations"], table["methods"]
    fig = Figure(figsize=(3.2 + 1.3 * len(names) * 2, 0.9 + 0.32 * len(labels)), dpi=110)
    axes = fig.subplots(1, 2, sharey=True)
    norm = LogNorm(vmin=0.1, vmax=10.0)
    for ax, (measure, title) in zip(axes, MEASURES.items()):
        values = np.asarray(table[measure])
        image = ax.imshow(np.clip(values, 0.1, 10.0), cmap="RdBu_r", norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.2 or v > 5 else "black"
            )
            if v >= DISCRIMINATION:
                ax.add_patch(_hatch(j, i))
        ax.set_xticks(range(len(names)), [t.replace("_", " ") for t in names], rotation=30, ha="right")
        ax.set_title(f"E_k / identity, {title}")
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    colorbar = fig.colorbar(image, ax=list(axes), shrink=0.8)
    colorbar.set_label(f"below 1: better than no transformation; hatched: ≥ {DISCRIMINATION}")
    fig.savefig(path, bbox_inches="tight")


def _hatch(x: float, y: float) -> Rectangle:
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.4", linewidth=0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, required=True, help="a table's compare.json")
    parser.add_argument("--out", type=Path, required=True, help="path stem: writes <out>.md, <out>.png, <out>.json")
    args = parser.parse_args(argv)
    if not args.compare.is_file():
        raise SystemExit(
            f"--compare {args.compare}: no such file (a table's compare.json, e.g. results/shapes3d/compare.json)"
        )
    table = ratios(json.loads(args.compare.read_text()))
    text = markdown(table)
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"discrimination": DISCRIMINATION, **table}, indent=1) + "\n")
    figure(table, args.out.with_suffix(".png"))
    print(f"wrote {args.out}.md, {args.out}.png and {args.out}.json")
    return table


if __name__ == "__main__":
    main()
