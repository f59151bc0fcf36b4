"""The paper's claims put to a finished comparison: a verdict per claim from seed-level intervals.

`python train/run.py claims --results results/mnist` reads the records `compare --results` keeps
(`runs/<method>/seed<i>/eval.json`) and writes claims.json and claims.md next to them. Every verdict
comes from one rule (docs/method.md §5):

* Each comparison of a claim is one column (a transformation, a pair, the likelihood): the paired
  difference a − b over every seed both methods have, its 95% interval (`table.seed_interval`: the
  wider of the t-interval over seed means and the one over seeds and sequences) and two p-values
  under the same t distribution, for the claimed direction and for the opposite (`p_values`).
* "a < b" (E_k) **holds** on a column when the interval lies below 0, **fails** when the opposite
  direction is significant after Holm's correction over all the claim's columns (family-wise 5%:
  a claim fails when *any* comparison fails, so that union is corrected), and is **not separated**
  otherwise; "a > b" (log p(x)) is the mirror image. A claim holds only when *every* comparison holds:
  that intersection is already a 5% test without correction (an intersection–union test).
* "a ≈ b" **holds** when a − b lies within ±`margin`·|mean of b| (two one-sided tests), **fails** when
  it lies outside that band (Holm-corrected as above), and is **not separated** otherwise.
* **not discriminating**: an E_k comparison in which both methods' E_k are at 0.9 of their own identity
  score (z_t = μ(x_0)) or above (neither beats learning nothing by more than 10%) ranks first-frame
  reconstruction, not equivariance: no verdict on it. A column on which every method is there is named
  as a whole (`not_discriminating`).
* **unresolved by the estimator**: a likelihood difference no larger than the estimator's drift (the
  larger of the two methods' mean |S = 100 − S = 1000| difference, `likelihood_drift` of their
  records; unknown drift counts as unresolved).
* A claim **fails** when any of its comparisons fails; otherwise it is **incomplete** while a
  comparison's methods have no records (listed as missing, never guessed), **holds** when every
  comparison that can be judged holds, and is otherwise **not separated** (or **not discriminating** /
  **unresolved by the estimator** when no comparison of it can be judged, for that reason).
* A comparison with one paired seed has no interval (the seed-to-seed spread is unknown): not separated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from .. import methods
from ..runs import RunError, atomic_write
from .claim_sets import (
    ABLATION_METRICS,
    ABLATIONS,
    DISCRIMINATION,
    EQUIVALENCE_MARGIN,
    FAMILY_ALPHA,
    PAPER_ALIASES,
    PAPER_CLAIMS,
    PAPER_TABLE_1,
    STA_CLAIMS,
    Claim,
    Comparison,
    Relation,
    Verdict,
)
from .claims_text import to_markdown
from .table import run_columns, seed_interval


def load_records(results_dir: str | Path) -> dict[str, list[dict]]:
    """Every method's eval.json records under `results_dir/runs/<method>/seed<i>/`, seeds in order
    (a method's seeds must be 0 … n−1: a gap is an error that names the missing seed; records moved
    aside, `seed<i>.damaged-…` and `seed<i>.superseded-…`, are not read)."""
    root = Path(results_dir) / "runs"
    if not root.is_dir():
        raise RunError(f"{root} does not exist: pass the folder given to `compare --results` (e.g. results/mnist)")
    records: dict[str, list[dict]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in methods.METHODS:
            raise RunError(f"{folder} is not a method of this package ({', '.join(methods.METHODS)})")
        seeds = sorted(
            int(p.name.removeprefix("seed"))
            for p in folder.glob("seed*")
            if p.name.removeprefix("seed").isdigit() and (p / "eval.json").exists()
        )
        if seeds != list(range(len(seeds))):
            missing = sorted(set(range(max(seeds) + 1)) - set(seeds))
            raise RunError(f"{folder} has seeds {seeds} but not {missing}: rerun compare to finish them")
        if seeds:
            records[folder.name] = [json.loads((folder / f"seed{s}" / "eval.json").read_text()) for s in seeds]
    return records


def p_values(diff: dict, relation: Relation, reference: float) -> tuple[float | None, float | None]:
    """(p_holds, p_fails) of one comparison from `seed_interval`'s mean, standard error and degrees of
    freedom (those of its interval), each twice a one-sided p-value, so that p_holds < 0.05 exactly when
    the 95% interval lies on the claimed side: for "less" ("greater") the tests of a − b < 0 (> 0)
    and of the opposite; for "equal" the two one-sided tests of |a − b| < band (holds) and the test of
    a − b lying outside the band on the mean's side (fails). (None, None) without an interval (one
    paired seed)."""
    se, mean, df = diff["se"], diff["mean"], diff["df"]
    if se is None:
        return None, None

    def above(x: float) -> float:  # one-sided p of "a − b > x"
        if se == 0:
            return 0.0 if mean > x else 1.0
        return float(scipy_stats.t.sf((mean - x) / se, df))

    def below(x: float) -> float:  # one-sided p of "a − b < x"
        if se == 0:
            return 0.0 if mean < x else 1.0
        return float(scipy_stats.t.cdf((mean - x) / se, df))

    if relation == "less":
        return min(1.0, 2 * below(0.0)), min(1.0, 2 * above(0.0))
    if relation == "greater":
        return min(1.0, 2 * above(0.0)), min(1.0, 2 * below(0.0))
    band = EQUIVALENCE_MARGIN * abs(reference)
    return min(1.0, 2 * max(above(-band), below(band))), min(1.0, 2 * min(above(band), below(-band)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values (step-down; each at most 1 and never below an earlier one in order)."""
    order = np.argsort(p_values, kind="stable")
    m, running, adjusted = len(p_values), 0.0, [1.0] * len(p_values)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def judge(ci95: Sequence[float] | None, relation: Relation, reference: float) -> Verdict:
    """The uncorrected verdict on one column from the 95% interval of a − b (no interval: not separated)."""
    if ci95 is None:
        return "not separated"
    lo, hi = ci95
    if relation == "less":
        return "holds" if hi < 0 else "fails" if lo > 0 else "not separated"
    if relation == "greater":
        return "holds" if lo > 0 else "fails" if hi < 0 else "not separated"
    band = EQUIVALENCE_MARGIN * abs(reference)
    if -band < lo and hi < band:
        return "holds"
    return "fails" if hi < -band or lo > band else "not separated"


def identity_ratios(records: dict[str, list[dict]], *, changed: bool = False) -> dict[str, dict[str, float]]:
    """Every E_k column's mean E_k over each method's seeds divided by its mean identity score:
    column → method → ratio (a method without an identity score on a column is left out). With
    `changed`, both over the pixels that change between x_0 and x_t (`equivariance_error_changed` over
    `equivariance_error_identity_changed`); the columns keep their E_k names."""
    suffix = "_changed" if changed else ""
    ratios: dict[str, dict[str, float]] = {}
    for name, runs in records.items():
        for t in runs[0]["transformations"]:
            own = [r["transformations"][t].get(f"equivariance_error{suffix}") for r in runs]
            ident = [r["transformations"][t].get(f"equivariance_error_identity{suffix}") for r in runs]
            if None in own or None in ident or not np.mean(ident):
                continue
            ratios.setdefault(f"equivariance_error/{t}", {})[name] = float(np.mean(own) / np.mean(ident))
    return ratios


def not_discriminating(ratios: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The columns of `identity_ratios` on which every method is at `DISCRIMINATION` or above."""
    return {c: r for c, r in ratios.items() if min(r.values()) >= DISCRIMINATION}


def estimator_drift(runs: list[dict]) -> float | None:
    """A method's likelihood drift: the mean over its seeds of |S − S'| (`likelihood_drift`), None if a
    record has none."""
    drifts = [r.get("likelihood_drift", {}).get("mean_abs_difference") for r in runs]
    return None if None in drifts else float(np.mean(drifts))


def _paper_ratio(a: str, b: str, column: str, transforms: list[str]) -> float | None:
    pa, pb = PAPER_TABLE_1.get(PAPER_ALIASES.get(a, a)), PAPER_TABLE_1.get(PAPER_ALIASES.get(b, b))
    name = column.split("/", 1)[1] if "/" in column else ""
    if pa is None or pb is None or not column.startswith("equivariance_error/") or name not in transforms:
        return None
    i = transforms.index(name)
    return pa[i] / pb[i]


def compare_columns(
    records: dict[str, list[dict]],
    comparison: Comparison,
    *,
    paper: bool = False,
    identity: dict[str, dict[str, float]] | None = None,
) -> list[dict]:
    """One row per column of `comparison.metric`: each method's mean over all its seeds, a − b over the
    seeds both have with its 95% interval and p-values (`p_values`), the ratio a / b of the paired
    seeds' means and the seeds paired, and the verdict of the row alone (`judge`, also kept as
    `verdict_uncorrected`; `decide` corrects a claim's rows together, as `assess` does); one row with
    verdict "missing" when either method has no records. With `identity` (`identity_ratios`) an E_k
    row carries both methods' E_k / identity and is marked not discriminating when both are at
    `DISCRIMINATION` or above; likelihood rows carry the estimator's drift.
    Where either paired mean is not positive (log p(x)) the ratio is None: a ratio of two negatives
    reads backwards."""
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
        diff = seed_interval(seqs_a, seqs_b)
        paired = diff["seeds"]
        values_a, values_b = [c[column][0] for c in cols_a], [c[column][0] for c in cols_b]
        paired_a, paired_b = float(np.mean(values_a[:paired])), float(np.mean(values_b[:paired]))
        p_holds, p_fails = p_values(diff, comparison.relation, paired_b)
        row = {
            "a": a,
            "b": b,
            "column": column,
            "mean_a": float(np.mean(values_a)),
            "mean_b": float(np.mean(values_b)),
            "difference": diff["mean"],
            "ci95": diff["ci95"],
            "per_seed": diff["per_seed"],
            "p_holds": p_holds,
            "p_fails": p_fails,
            "ratio": paired_a / paired_b if paired_a > 0 and paired_b > 0 else None,
            "seeds_paired": paired,
            "verdict_uncorrected": judge(diff["ci95"], comparison.relation, paired_b),
        }
        row["verdict"] = row["verdict_uncorrected"]  # alone, a family of one; `decide` corrects a claim's rows
        pair = [(identity or {}).get(column, {}).get(m) for m in (a, b)]
        if None not in pair:
            row["identity_ratio"] = pair
            if min(pair) >= DISCRIMINATION:
                row["not_discriminating"] = True
        if column == "log_likelihood":
            drifts = [estimator_drift(records[a]), estimator_drift(records[b])]
            row["estimator_drift"] = None if None in drifts else max(drifts)
        if paper:
            row["paper_ratio"] = _paper_ratio(a, b, column, transforms)
        rows.append(row)
    if not rows:
        raise RunError(f"no column {comparison.metric!r} in the records of {a} and {b}")
    return rows


def decide(rows: list[dict]) -> None:
    """Set each row's `verdict` as one claim's (module doc): a row holds when its interval lies on the
    claimed side (p_holds < 0.05: "every comparison holds" is an intersection–union test, at 5% without
    correction); it fails when Holm's step-down over the claim's judged rows rejects it in the opposite
    direction (`p_fails_holm` < 0.05: "some comparison fails" is a union, corrected); rows that do not
    discriminate, or without an interval, are not judged; then a likelihood difference
    within the estimator's drift is unresolved."""
    judged = [r for r in rows if r.get("verdict") != "missing"]
    for r in judged:
        r["verdict"] = "not discriminating" if r.get("not_discriminating") else "not separated"
    tested = [r for r in judged if not r.get("not_discriminating") and r["p_holds"] is not None]
    for r, adjusted in zip(tested, holm([r["p_fails"] for r in tested])):
        r["p_fails_holm"] = adjusted
        if r["p_holds"] < FAMILY_ALPHA:
            r["verdict"] = "holds"
        elif adjusted < FAMILY_ALPHA:
            r["verdict"] = "fails"
    for r in judged:
        if "estimator_drift" in r and r["verdict"] in ("holds", "fails"):
            drift = r["estimator_drift"]
            if drift is None or abs(r["difference"]) <= drift:
                r["verdict"] = "unresolved by the estimator"


def _overall(verdicts: Sequence[str]) -> Verdict:
    if "fails" in verdicts:
        return "fails"
    if "missing" in verdicts:
        return "incomplete"
    judged = [v for v in verdicts if v not in ("not discriminating", "unresolved by the estimator")]
    if judged:
        return "holds" if all(v == "holds" for v in judged) else "not separated"
    return "unresolved by the estimator" if "unresolved by the estimator" in verdicts else "not discriminating"


def assess(records: dict[str, list[dict]], claims: Sequence[Claim] = PAPER_CLAIMS, *, paper: bool = False) -> dict:
    """Every claim's rows (`compare_columns`) and overall verdict, and the ablation table: each FFVAE
    variant against PoFlow and against the FFVAE, in range, beyond the horizon and in composition.
    A place no record measured (extrapolation and composition need MNIST's analytic transformations)
    is listed under `ablation_places_not_measured` instead. `paper`: add the paper's Table 1 ratio
    where it has both rows (MNIST). Each claim's rows, and each ablation comparison's, are one Holm
    family (`decide`)."""
    identity = identity_ratios(records)
    out: dict = {
        "equivalence_margin": EQUIVALENCE_MARGIN,
        "interval": "t-interval over the per-seed mean differences, paired over every seed both methods have",
        "correction": (
            f"a comparison holds at {FAMILY_ALPHA:.0%} alone (a claim holds only if all do: intersection-union); "
            f"it fails at {FAMILY_ALPHA:.0%} family-wise, Holm over the claim's comparisons"
        ),
        "discrimination": DISCRIMINATION,
        "not_discriminating": not_discriminating(identity),
        "seeds": {m: len(r) for m, r in records.items()},
        "estimator_drift": {m: estimator_drift(r) for m, r in records.items()},
    }
    out["claims"] = {}
    for claim in (*claims, *(STA_CLAIMS if "sta" in records else ())):
        rows = [row for c in claim.comparisons for row in compare_columns(records, c, paper=paper, identity=identity)]
        decide(rows)
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
                rows = compare_columns(records, Comparison(variant, against, metric, "less"), identity=identity)
                decide(rows)
                ablation[f"{variant} − {against}, {where}"] = rows
    out["ablations"] = ablation
    return out


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
        "a − b is the paired difference over every seed both methods have (seed i with seed i, each seed's "
        "difference the mean over the same held-out sequences) with its 95% t-interval over those seeds' "
        "differences (docs/method.md §5; its coverage: results/statistics); a / b is the ratio of the two means over "
        "the paired seeds (E_k only: for log p(x) a ratio of two negatives reads backwards), while mean a and mean b "
        "average every seed of each. p holds / p fails: the p-value of the claimed direction (below "
        f"{FAMILY_ALPHA} exactly when the interval lies on that side: the row holds) and that of the opposite "
        "direction after Holm's correction over the claim's rows (below it: the row fails). A claim holds when every "
        "row holds (an intersection-union test, at 5% as it is) and fails when any row fails (a union: hence the "
        f"correction). 'a < b' holds below 0, 'a ≈ b' within ±{EQUIVALENCE_MARGIN:.0%} of b's mean over the paired "
        "seeds (two one-sided tests); 'not separated' is undecided, not 'fails'. "
        "A row with one paired seed has no interval and is not separated."
    )
    json_path, md_path = results_dir / "claims.json", results_dir / "claims.md"
    atomic_write(json_path, json.dumps(assessment, indent=2))
    atomic_write(md_path, to_markdown(assessment, header))
    return json_path, md_path
