"""claims.md and the README's claim summaries, written from an assessment (`claims.assess`): the
tables of every claim's comparisons and the ablations, and one generated line per claim."""

from __future__ import annotations

import json
from pathlib import Path

from .. import methods
from ..runs import RunError, atomic_write

SHORT = {
    "ffvae-beats-poflow": "FFVAE < PoFlow on every E_k (both PoFlow protocols)",
    "ffvae-authors-beats-poflow": "FFVAE under its authors' trainer < PoFlow (both protocols)",
    "ffvae-sde-beats-poflow": "FFVAE under the path-space ELBO < PoFlow (both protocols)",
    "rate-tax-mechanism": "rollout VAE with z_0 KL × (T+1) ≈ the literal-ELBO FFVAE (the rate tax)",
    "poflow-beats-baselines": "PoFlow < every flow-less baseline",
    "ffvae-beats-baselines": "FFVAE < every flow-less baseline",
    "weak-equals-supervised": "weak ≈ supervised (this package's weak FFVAE)",
    "group-equals-supervised": "the authors' group variant ≈ supervised",
    "ffvae-highest-likelihood": "FFVAE has the highest log p(x)",
    "baseline-ordering": "the baselines' order (β-VAE < VAE, FactorVAE < β-VAE, SlowVAE, TVAE < FactorVAE)",
}
"""Each claim in a few words, for the README's summary (`summary`)."""


def _label(name: str) -> str:
    return methods.get_method(name).label


def _fmt(x: float) -> str:
    return f"{x:+.1f}" if abs(x) < 1e4 else f"{x:+.3g}"


def _ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}"


def _interval_md(row: dict) -> str:
    if row["ci95"] is None:
        return f"{_fmt(row['difference'])} (1 seed: no interval)"
    lo, hi = row["ci95"]
    return f"{_fmt(row['difference'])} [{_fmt(lo)}, {_fmt(hi)}]"


def _p_md(row: dict) -> str:
    if row.get("p_holds") is None or row.get("not_discriminating"):  # not judged: outside the Holm family
        return "—"
    fails = row.get("p_fails_holm", row["p_fails"])
    return f"{row['p_holds']:.3f} / {fails:.3f}"


def _verdict_md(row: dict) -> str:
    verdict = row["verdict"]
    if verdict == "unresolved by the estimator":
        drift = row.get("estimator_drift")
        return f"**{verdict}** (drift {'unknown' if drift is None else f'{drift:.1f}'})"
    if verdict == "not discriminating":
        ratio_a, ratio_b = row["identity_ratio"]
        return f"**{verdict}** (E_k / identity {ratio_a:.2f}, {ratio_b:.2f})"
    return f"**{verdict}**"


def _row_md(row: dict, paper: bool) -> str:
    column = row["column"]
    if row["verdict"] == "missing":
        cells = [_label(row["a"]), _label(row["b"]), column, "—", "—", "—", "—", "—"]
        return "| " + " | ".join(cells + (["—"] if paper else []) + ["no records: " + ", ".join(row["missing"])]) + " |"
    cells = [
        _label(row["a"]),
        _label(row["b"]),
        column,
        f"{row['mean_a']:.1f} / {row['mean_b']:.1f}",
        _interval_md(row),
        _p_md(row),
        _ratio(row["ratio"]),
        str(row["seeds_paired"]),
    ]
    if paper:
        cells.append("—" if row.get("paper_ratio") is None else f"{row['paper_ratio']:.2f}")
    return "| " + " | ".join(cells + [_verdict_md(row)]) + " |"


def to_markdown(assessment: dict, header: str = "") -> str:
    """claims.md: a summary line per claim, then each claim's comparisons, then the ablation table."""
    paper = any("paper_ratio" in r for c in assessment["claims"].values() for r in c["rows"])
    head = "| a | b | column | mean a / mean b | a − b [95% CI] | p holds / p fails (Holm) | a / b (paired) | seeds paired |"
    rule = "|---|---|---|---:|---:|---:|---:|---:|"
    if paper:
        head, rule = head + " paper a / b |", rule + "---:|"
    head, rule = head + " verdict |", rule + "---|"
    seeds = ", ".join(f"{_label(m)} {n}" for m, n in assessment["seeds"].items())
    lines = [header, "", f"Seeds per method: {seeds}."]
    floor = assessment["discrimination"]
    lines += [
        "",
        f"A comparison in which both methods' E_k are ≥ {floor:g} × their own identity score (z_t = z_0) ranks "
        "first-frame reconstruction, not equivariance: it is not discriminating and gets no verdict (its verdict "
        "cell gives both ratios).",
    ]
    if assessment.get("not_discriminating"):
        lines += ["", f"Columns that do not discriminate (every method's E_k ≥ {floor:g} × its own identity score):"]
        for column, ratios in assessment["not_discriminating"].items():
            spread = f"{min(ratios.values()):.2f}–{max(ratios.values()):.2f}"
            lines.append(f"- {column}: E_k / identity {spread} over {len(ratios)} methods; no verdict on it.")
    drifts = {m: d for m, d in assessment.get("estimator_drift", {}).items() if d is not None}
    if drifts:
        spread = f"{min(drifts.values()):.2f}–{max(drifts.values()):.2f}"
        lines += [
            "",
            f"Likelihood estimator drift (mean |S − S'| per method, `likelihood_drift` of its records): {spread} nats; "
            "a likelihood difference within the larger drift of its two methods is unresolved by the estimator.",
        ]
    lines += ["", "| claim | verdict |", "|---|---|"]
    for claim in assessment["claims"].values():
        note = f" (no records yet: {', '.join(claim['missing'])})" if claim["missing"] else ""
        lines.append(f"| {claim['text']} | **{claim['verdict']}**{note} |")
    for claim in assessment["claims"].values():
        lines += ["", f"### {claim['text']} — {claim['verdict']}", "", head, rule]
        lines += [_row_md(r, paper) for r in claim["rows"]]
    if not assessment.get("ablations"):
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "### Ablations: each FFVAE variant against PoFlow and against the FFVAE",
        "",
        "a − b below 0 favours the variant (a); the verdict reads 'a < b', its 'fails' Holm-corrected over the columns of each line's comparison.",
        "",
        *(
            [f"Not measured on this dataset (its records have no such probe): {', '.join(absent)}.", ""]
            if (absent := assessment.get("ablation_places_not_measured"))
            else []
        ),
        "| comparison | column | mean a / mean b | a − b [95% CI] | p holds / p fails (Holm) | a / b (paired) | seeds paired | a < b |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in assessment["ablations"].items():
        for r in rows:
            if r["verdict"] == "missing":
                lines.append(f"| {name} | — | — | — | — | — | — | no records: {', '.join(r['missing'])} |")
                continue
            lines.append(
                f"| {name} | {r['column']} | {r['mean_a']:.1f} / {r['mean_b']:.1f} | {_interval_md(r)} | {_p_md(r)} | "
                f"{_ratio(r['ratio'])} | {r['seeds_paired']} | {r['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def summary(assessment: dict) -> str:
    """The README's summary of a claims.json: one line per claim with its verdict, how many of its
    comparisons hold, fail and stay undecided, and the range of a / b over its E_k comparisons; then the
    columns that do not discriminate and the estimator's drift. Generated, never edited by hand
    (`write_readme_summary`)."""
    lines = []
    for name, claim in assessment["claims"].items():
        rows = [r for r in claim["rows"] if r["verdict"] != "missing"]
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        order = ("holds", "fails", "not separated", "not discriminating", "unresolved by the estimator")
        tally = ", ".join(f"{counts[v]} {v}" for v in order if v in counts)
        ratios = [r["ratio"] for r in rows if r.get("ratio") is not None]
        ratio = f"; a / b {min(ratios):.2f}–{max(ratios):.2f}×" if ratios else ""
        parts = [f"{tally} of {len(rows)} comparisons{ratio}"] if rows else []
        if claim["missing"]:
            parts.append(f"no records yet: {', '.join(claim['missing'])}")
        lines.append(f"- {SHORT.get(name, claim['text'])}: **{claim['verdict']}** ({'; '.join(parts)})")
    if assessment.get("not_discriminating"):
        columns = ", ".join(c.split("/", 1)[1] for c in assessment["not_discriminating"])
        floor = assessment["discrimination"]
        lines.append(
            f"- Not discriminating (every method's E_k ≥ {floor:g} × its identity score; no verdict): {columns}; "
            "elsewhere a comparison of two methods both at that floor gets none either."
        )
    drifts = [d for d in assessment.get("estimator_drift", {}).values() if d is not None]
    if drifts:
        lines.append(
            f"- Likelihood estimator drift (S = 100 against S = 1000): {min(drifts):.2f}–{max(drifts):.2f} nats."
        )
    return "\n".join(lines)


def readme_block(results_dir: str | Path) -> tuple[str, str]:
    """The README markers around the summary of `results_dir`'s claims."""
    return (
        f"<!-- claims {Path(results_dir).as_posix()}: written by `python train/run.py claims --results "
        f"{Path(results_dir).as_posix()} --readme README.md` from its claims.json; do not edit -->",
        f"<!-- /claims {Path(results_dir).as_posix()} -->",
    )


def write_readme_summary(readme: str | Path, results_dir: str | Path) -> None:
    """Replace the text between `readme_block`'s markers in `readme` by `summary` of `results_dir`'s
    claims.json; an error naming the markers if the README has none."""
    readme, results_dir = Path(readme), Path(results_dir)
    begin, end = readme_block(results_dir)
    text = readme.read_text()
    if begin not in text or end not in text:
        raise RunError(
            f"{readme} has no block for {results_dir}: add the lines\n{begin}\n{end}\nwhere the summary goes"
        )
    assessment = json.loads((results_dir / "claims.json").read_text())
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write(readme, f"{head}{begin}\n{summary(assessment)}\n{end}{tail}")
