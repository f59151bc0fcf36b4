"""Which columns of a table measure equivariance: every method's E_k over its own identity score
(z_t = μ(x_0), no transformation), over every pixel and over the pixels that change between x_0 and
x_t, from a table's records (`claims.identity_ratios`: the ratio of the seed means, the quantity the
claims' rule reads).

A cell at `DISCRIMINATION` (0.9) or above ranks first-frame reconstruction, not equivariance
(docs/method.md §5; over every pixel it is what `claims` calls not discriminating): the figure draws
those cells hatched. Prints the table, writes it as Markdown, the figure as PNG and the numbers as JSON:

    python benchmarks/identity_ratios.py --results results/shapes3d --out results/shapes3d/identity_ratios
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from eqx_ffvae.methods import METHODS
from eqx_ffvae.reporting.claim_sets import DISCRIMINATION
from eqx_ffvae.reporting.claims import identity_ratios, load_records

MEASURES = {"every pixel": False, "changed pixels": True}


def ratios(records: dict[str, list[dict]]) -> dict:
    """{"methods": labels, "transformations": names, measure: methods × transformations}, methods in the
    registry's order. Raises ValueError naming the method and transformation when a record lacks the
    scores a ratio needs (records made before the identity probes: rerun `compare` on them)."""
    names = sorted(records, key=list(METHODS).index)
    transformations = list(records[names[0]][0]["transformations"])
    out: dict = {"methods": [METHODS[n].label for n in names], "transformations": transformations}
    for measure, changed in MEASURES.items():
        by_column = identity_ratios(records, changed=changed)
        rows = []
        for name in names:
            row = []
            for t in transformations:
                value = by_column.get(f"equivariance_error/{t}", {}).get(name)
                if value is None:
                    raise ValueError(
                        f"{name}'s records have no identity score for {t} over {measure}: rerun `compare` on them "
                        "at this commit to add it"
                    )
                row.append(value)
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
    for label, every, changed in zip(table["methods"], *(table[m] for m in MEASURES)):
        lines.append(f"| {label} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(every, changed)) + " |")
    return "\n".join(lines) + "\n"


def figure(table: dict, path: Path) -> None:
    """Two heat maps side by side (every pixel, changed pixels), log colour scale centred on 1, cells at
    `DISCRIMINATION` or above hatched, each cell labelled with its ratio."""
    names, labels = table["transformations"], table["methods"]
    fig = Figure(figsize=(3.2 + 1.3 * len(names) * 2, 0.9 + 0.32 * len(labels)), dpi=110)
    axes = fig.subplots(1, 2, sharey=True)
    norm = LogNorm(vmin=0.1, vmax=10.0)
    for ax, measure in zip(axes, MEASURES):
        values = np.asarray(table[measure])
        image = ax.imshow(np.clip(values, 0.1, 10.0), cmap="RdBu_r", norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.2 or v > 5 else "black"
            )
            if v >= DISCRIMINATION:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.4", linewidth=0))
        ax.set_xticks(range(len(names)), [t.replace("_", " ") for t in names], rotation=30, ha="right")
        ax.set_title(f"E_k / identity, {measure}")
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    colorbar = fig.colorbar(image, ax=list(axes), shrink=0.8)
    colorbar.set_label(f"below 1: better than no transformation; hatched: ≥ {DISCRIMINATION}")
    fig.savefig(path, bbox_inches="tight")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True, help="a table's folder (its runs/), e.g. results/mnist")
    parser.add_argument("--out", type=Path, required=True, help="path stem: writes <out>.md, <out>.png, <out>.json")
    args = parser.parse_args(argv)
    table = ratios(load_records(args.results))
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
