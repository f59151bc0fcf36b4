"""The paper's claims put to a finished comparison: a verdict per claim from paired bootstrap intervals.

`python train/run.py claims --results results/mnist` reads the records `compare --results` keeps
(`runs/<method>/seed<i>/eval.json`) and writes claims.json and claims.md next to them. Every verdict
comes from one rule (SPEC §5: "better" means the 95% interval of the paired difference excludes 0):

* "a < b" on a column (lower is better, E_k) **holds** when the interval of a − b lies below 0,
  **fails** when it lies above 0 (the opposite order is supported), and is **not separated** otherwise;
  "a > b" (log p(x)) is the mirror image.
* "a ≈ b" **holds** when the interval of a − b lies inside ±`margin`·|mean of b| (equivalence within the
  margin), **fails** when it lies wholly outside that band, and is **not separated** otherwise.
* A claim fails when any comparison in it fails; otherwise it is **incomplete** while a comparison's
  methods have no records (listed as missing, never guessed), holds when every comparison holds, and
  is otherwise not separated.

The intervals are `compare.paired_bootstrap` over seeds (paired by index: the first min(#a, #b)) and
held-out sequences; a row with one seed covers only the variation over sequences, and says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .. import methods
from ..runs import RunError, atomic_write
from .table import paired_bootstrap, run_columns

Relation = Literal["less", "greater", "equal"]
Verdict = Literal["holds", "fails", "not separated", "missing", "incomplete"]

EQUIVALENCE_MARGIN = 0.10
"""'a ≈ b' holds when the 95% interval of a − b lies within ±10% of b's mean."""

MAIN_BASELINES = ("vae", "beta-vae", "factorvae", "slowvae", "tvae")
POFLOWS = ("poflow", "poflow-authors")
ABLATIONS = ("ffvae-no-flow-kl", "ffvae-no-hj", "ffvae-rollout", "ffvae-0.1")

PAPER_TABLE_1 = {
    "vae": (1275, 1311, 1369),
    "beta-vae": (742, 751, 808),
    "factorvae": (660, 632, 662),
    "slowvae": (462, 447, 398),
    "tvae": (505, 493, 451),
    "poflow": (235, 231, 241),
    "ffvae": (185, 154, 159),
    "ffvae-group": (194, 157, 165),
}
"""The paper's Table 1 E_k (scale, rotation, hue), for orientation only (SPEC §5): its estimators differ
from ours, so only ratios between its rows are shown next to ours. Its weak row is the authors' group
variant; PoFlow under its authors' protocol is its PoFlow."""
PAPER_ALIASES = {"poflow-authors": "poflow", "ffvae-weak": "ffvae-group"}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """`a` against `b` on every column whose id starts with `metric` (one per transformation or
    pair), under `relation`: "less" (a − b < 0), "greater" (a − b > 0) or "equal" (within the margin)."""

    a: str
    b: str
    metric: str
    relation: Relation


@dataclasses.dataclass(frozen=True)
class Claim:
    """A statement of the paper (`text`) as the comparisons that make it."""

    name: str
    text: str
    comparisons: tuple[Comparison, ...]


def _every_ek(pairs: Sequence[tuple[str, str]], relation: Relation) -> tuple[Comparison, ...]:
    return tuple(Comparison(a, b, "equivariance_error/", relation) for a, b in pairs)


PAPER_CLAIMS = (
    Claim(
        "ffvae-beats-poflow",
        "FFVAE has a lower E_k than PoFlow on every transformation (both PoFlow protocols)",
        _every_ek([("ffvae", p) for p in POFLOWS], "less"),
    ),
    Claim(
        "ffvae-authors-beats-poflow",
        "FFVAE under its authors' trainer (the objective behind the paper's numbers) has a lower E_k than "
        "PoFlow on every transformation (both PoFlow protocols)",
        _every_ek([("ffvae-authors", p) for p in POFLOWS], "less"),
    ),
    Claim(
        "ffvae-sde-beats-poflow",
        "FFVAE under the path-space ELBO has a lower E_k than PoFlow on every transformation (both PoFlow protocols)",
        _every_ek([("ffvae-sde", p) for p in POFLOWS], "less"),
    ),
    Claim(
        "rate-tax-mechanism",
        f"the rollout VAE with its z_0 KL weighted T+1 has the E_k of the literal-ELBO FFVAE (within "
        f"±{EQUIVALENCE_MARGIN:.0%}): the per-frame KLs act as a rate tax (docs/method.md §4; not a claim of the paper)",
        _every_ek([("ffvae-rollout-kl0", "ffvae")], "equal"),
    ),
    Claim(
        "poflow-beats-baselines",
        "PoFlow has a lower E_k than every baseline without a flow (VAE, β-VAE, FactorVAE, SlowVAE, TVAE)",
        _every_ek([(p, b) for p in POFLOWS for b in MAIN_BASELINES], "less"),
    ),
    Claim(
        "ffvae-beats-baselines",
        "FFVAE has a lower E_k than every baseline without a flow",
        _every_ek([("ffvae", b) for b in MAIN_BASELINES], "less"),
    ),
    Claim(
        "weak-equals-supervised",
        f"the weakly supervised FFVAE's E_k equals the supervised one's (within ±{EQUIVALENCE_MARGIN:.0%})",
        _every_ek([("ffvae-weak", "ffvae")], "equal"),
    ),
    Claim(
        "group-equals-supervised",
        f"the authors' group-supervised FFVAE's E_k equals the supervised one's (within ±{EQUIVALENCE_MARGIN:.0%})",
        _every_ek([("ffvae-group", "ffvae")], "equal"),
    ),
    Claim(
        "ffvae-highest-likelihood",
        "FFVAE has the highest log-likelihood of all methods",
        tuple(
            Comparison("ffvae", m, "log_likelihood", "greater")
            for m in (*MAIN_BASELINES, *POFLOWS, "ffvae-weak", "ffvae-group")
        ),
    ),
    Claim(
        "baseline-ordering",
        "the baselines' order: β-VAE < VAE, FactorVAE < β-VAE, SlowVAE < FactorVAE, TVAE < FactorVAE on E_k",
        _every_ek(
            [("beta-vae", "vae"), ("factorvae", "beta-vae"), ("slowvae", "factorvae"), ("tvae", "factorvae")], "less"
        ),
    ),
)

ABLATION_METRICS = {
    "in range": "equivariance_error/",
    "beyond the horizon": "equivariance_error_extrapolation/",
    "in composition": "equivariance_error_composition/",
}


def load_records(results_dir: str | Path) -> dict[str, list[dict]]:
    """Every method's eval.json records under `results_dir/runs/<method>/seed<i>/`, seeds in order
    (a method's seeds must be 0 … n−1: a gap is an error that names the missing seed)."""
    root = Path(results_dir) / "runs"
    if not root.is_dir():
        raise RunError(f"{root} does not exist: pass the folder given to `compare --results` (e.g. results/mnist)")
    records: dict[str, list[dict]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in methods.METHODS:
            raise RunError(f"{folder} is not a method of this package ({', '.join(methods.METHODS)})")
        seeds = sorted(int(p.name.removeprefix("seed")) for p in folder.glob("seed*") if (p / "eval.json").exists())
        if seeds != list(range(len(seeds))):
            missing = sorted(set(range(max(seeds) + 1)) - set(seeds))
            raise RunError(f"{folder} has seeds {seeds} but not {missing}: rerun compare to finish them")
        if seeds:
            records[folder.name] = [json.loads((folder / f"seed{s}" / "eval.json").read_text()) for s in seeds]
    return records


def judge(ci95: Sequence[float], relation: Relation, reference: float) -> Verdict:
    """The verdict on one column from the paired difference a − b and its 95% interval (module doc)."""
    lo, hi = ci95
    if relation == "less":
        return "holds" if hi < 0 else "fails" if lo > 0 else "not separated"
    if relation == "greater":
        return "holds" if lo > 0 else "fails" if hi < 0 else "not separated"
    band = EQUIVALENCE_MARGIN * abs(reference)
    if -band < lo and hi < band:
        return "holds"
    return "fails" if hi < -band or lo > band else "not separated"


def _paper_ratio(a: str, b: str, column: str, transforms: list[str]) -> float | None:
    pa, pb = PAPER_TABLE_1.get(PAPER_ALIASES.get(a, a)), PAPER_TABLE_1.get(PAPER_ALIASES.get(b, b))
    name = column.split("/", 1)[1] if "/" in column else ""
    if pa is None or pb is None or not column.startswith("equivariance_error/") or name not in transforms:
        return None
    i = transforms.index(name)
    return pa[i] / pb[i]


def compare_columns(records: dict[str, list[dict]], comparison: Comparison, *, paper: bool = False) -> list[dict]:
    """One row per column of `comparison.metric`: each method's mean over all its seeds, a − b with its
    95% interval, the ratio a / b and the seeds paired, and the verdict; one row with verdict "missing"
    when either method has no records. The ratio, the difference and the ±margin band of "equal" all
    use the paired seeds only (the first min(#a, #b)), so on a positive column (E_k) the ratio lies
    below 1 exactly when the difference lies below 0. Where either paired mean is not positive
    (log p(x)) the ratio is None: a ratio of two negatives reads backwards."""
    a, b = comparison.a, comparison.b
    if a not in records or b not in records:
        absent = [m for m in (a, b) if m not in records]
        return [{"a": a, "b": b, "column": comparison.metric, "verdict": "missing", "missing": absent}]
    cols_a = [run_columns(r) for r in records[a]]
    cols_b = [run_columns(r) for r in records[b]]
    transforms = list(records[b][0]["transformations"])
    rows = []
    for column in cols_b[0]:
        if not column.startswith(comparison.metric) or column not in cols_a[0]:
            continue
        seqs_a, seqs_b = [c[column][1] for c in cols_a], [c[column][1] for c in cols_b]
        if any(s is None for s in seqs_a + seqs_b):
            raise RunError(f"{column} of {a} or {b} has no per-sequence values: re-evaluate those runs")
        diff = paired_bootstrap(seqs_a, seqs_b)
        paired = min(len(seqs_a), len(seqs_b))
        values_a, values_b = [c[column][0] for c in cols_a], [c[column][0] for c in cols_b]
        paired_a, paired_b = float(np.mean(values_a[:paired])), float(np.mean(values_b[:paired]))
        row = {
            "a": a,
            "b": b,
            "column": column,
            "mean_a": float(np.mean(values_a)),
            "mean_b": float(np.mean(values_b)),
            "difference": diff["mean"],
            "ci95": diff["ci95"],
            "ratio": paired_a / paired_b if paired_a > 0 and paired_b > 0 else None,
            "seeds_paired": paired,
            "verdict": judge(diff["ci95"], comparison.relation, paired_b),
        }
        if paper:
            row["paper_ratio"] = _paper_ratio(a, b, column, transforms)
        rows.append(row)
    if not rows:
        raise RunError(f"no column {comparison.metric!r} in the records of {a} and {b}")
    return rows


def _overall(verdicts: Sequence[str]) -> Verdict:
    if "fails" in verdicts:
        return "fails"
    if "missing" in verdicts:
        return "incomplete"
    return "holds" if all(v == "holds" for v in verdicts) else "not separated"


def assess(records: dict[str, list[dict]], claims: Sequence[Claim] = PAPER_CLAIMS, *, paper: bool = False) -> dict:
    """Every claim's rows (`compare_columns`) and overall verdict, and the ablation table: each FFVAE
    variant against PoFlow and against the FFVAE, in range, beyond the horizon and in composition.
    A place no record measured (extrapolation and composition need MNIST's analytic transformations)
    is listed under `ablation_places_not_measured` instead. `paper`: add the paper's Table 1 ratio
    where it has both rows (MNIST)."""
    out: dict = {"equivalence_margin": EQUIVALENCE_MARGIN, "seeds": {m: len(r) for m, r in records.items()}}
    out["claims"] = {}
    for claim in claims:
        rows = [row for c in claim.comparisons for row in compare_columns(records, c, paper=paper)]
        out["claims"][claim.name] = {
            "text": claim.text,
            "verdict": _overall([r["verdict"] for r in rows]),
            "rows": rows,
            "missing": sorted({m for r in rows for m in r.get("missing", ())}),
        }
    measured = {column for runs_of in records.values() for column in run_columns(runs_of[0])}
    places = {w: m for w, m in ABLATION_METRICS.items() if any(c.startswith(m) for c in measured)}
    out["ablation_places_not_measured"] = sorted(set(ABLATION_METRICS) - set(places))
    ablation = {}
    for variant in ("ffvae", *ABLATIONS):
        for against in ("poflow", "ffvae"):
            if variant == against:
                continue
            for where, metric in places.items():
                rows = compare_columns(records, Comparison(variant, against, metric, "less"))
                ablation[f"{variant} − {against}, {where}"] = rows
    out["ablations"] = ablation
    return out


def _label(name: str) -> str:
    return methods.get_method(name).label


def _fmt(x: float) -> str:
    return f"{x:+.1f}" if abs(x) < 1e4 else f"{x:+.3g}"


def _ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}"


def _row_md(row: dict, paper: bool) -> str:
    column = row["column"]
    if row["verdict"] == "missing":
        cells = [_label(row["a"]), _label(row["b"]), column, "—", "—", "—", "—"]
        return "| " + " | ".join(cells + (["—"] if paper else []) + ["no records: " + ", ".join(row["missing"])]) + " |"
    lo, hi = row["ci95"]
    cells = [
        _label(row["a"]),
        _label(row["b"]),
        column,
        f"{row['mean_a']:.1f} / {row['mean_b']:.1f}",
        f"{_fmt(row['difference'])} [{_fmt(lo)}, {_fmt(hi)}]",
        _ratio(row["ratio"]),
        str(row["seeds_paired"]),
    ]
    if paper:
        cells.append("—" if row.get("paper_ratio") is None else f"{row['paper_ratio']:.2f}")
    return "| " + " | ".join(cells + [f"**{row['verdict']}**"]) + " |"


def to_markdown(assessment: dict, header: str = "") -> str:
    """claims.md: a summary line per claim, then each claim's comparisons, then the ablation table."""
    paper = any("paper_ratio" in r for c in assessment["claims"].values() for r in c["rows"])
    head = "| a | b | column | mean a / mean b | a − b [95% CI] | a / b (paired) | seeds paired |"
    rule = "|---|---|---|---:|---:|---:|---:|"
    if paper:
        head, rule = head + " paper a / b |", rule + "---:|"
    head, rule = head + " verdict |", rule + "---|"
    seeds = ", ".join(f"{_label(m)} {n}" for m, n in assessment["seeds"].items())
    lines = [header, "", f"Seeds per method: {seeds}.", "", "| claim | verdict |", "|---|---|"]
    for claim in assessment["claims"].values():
        note = f" (no records yet: {', '.join(claim['missing'])})" if claim["missing"] else ""
        lines.append(f"| {claim['text']} | **{claim['verdict']}**{note} |")
    for claim in assessment["claims"].values():
        lines += ["", f"### {claim['text']} — {claim['verdict']}", "", head, rule]
        lines += [_row_md(r, paper) for r in claim["rows"]]
    lines += [
        "",
        "### Ablations: each FFVAE variant against PoFlow and against the FFVAE",
        "",
        "a − b below 0 favours the variant (a); the verdict reads 'a < b'.",
        "",
        *(
            [f"Not measured on this dataset (its records have no such probe): {', '.join(absent)}.", ""]
            if (absent := assessment.get("ablation_places_not_measured"))
            else []
        ),
        "| comparison | column | mean a / mean b | a − b [95% CI] | a / b (paired) | seeds paired | a < b |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, rows in assessment["ablations"].items():
        for r in rows:
            if r["verdict"] == "missing":
                lines.append(f"| {name} | — | — | — | — | — | no records: {', '.join(r['missing'])} |")
                continue
            lo, hi = r["ci95"]
            lines.append(
                f"| {name} | {r['column']} | {r['mean_a']:.1f} / {r['mean_b']:.1f} | "
                f"{_fmt(r['difference'])} [{_fmt(lo)}, {_fmt(hi)}] | {_ratio(r['ratio'])} | {r['seeds_paired']} | "
                f"{r['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def write_claims(results_dir: str | Path, *, paper: bool | None = None) -> tuple[Path, Path]:
    """Assess the records under `results_dir` and write claims.json and claims.md there. `paper`
    (default: when the records are MNIST's) adds the paper's Table 1 ratios."""
    results_dir = Path(results_dir)
    records = load_records(results_dir)
    if not records:
        raise RunError(f"{results_dir / 'runs'} holds no finished run: run `compare --results {results_dir}` first")
    dataset = next(iter(records.values()))[0].get("dataset", "")
    paper = dataset == "mnist" if paper is None else paper
    assessment = assess(records, paper=paper)
    header = (
        f"# The paper's claims on {dataset or results_dir.name}\n\n"
        f"Written by `python train/run.py claims --results {results_dir}` from the records in `runs/`. "
        f"a − b is the paired difference over seeds and held-out sequences with its 95% bootstrap interval: "
        "it pairs seed i with seed i over the seeds both methods have, and so does a / b (the ratio of the two "
        "means over those paired seeds, given for E_k only: for log p(x) a ratio of two negatives reads backwards), "
        "while mean a and mean b average every seed of each; "
        f"'a < b' holds when the interval lies below 0, 'a ≈ b' when it lies within ±{EQUIVALENCE_MARGIN:.0%} "
        "of b's mean over the paired seeds. "
        "Where one of the two has a single seed, the interval covers the variation over held-out sequences only, "
        "not over training seeds."
    )
    json_path, md_path = results_dir / "claims.json", results_dir / "claims.md"
    atomic_write(json_path, json.dumps(assessment, indent=2))
    atomic_write(md_path, to_markdown(assessment, header))
    return json_path, md_path
