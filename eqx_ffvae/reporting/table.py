"""The comparison table: every scored column of a run's eval.json, their mean ± std over seeds, the
paired differences to the FFVAE with seed-level t-intervals, and the markdown of compare.md."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

from .. import methods
from ..runs import RunError


def seed_stats(values: list[float]) -> dict:
    arr = np.asarray(values, np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}


REFERENCE = "ffvae"  # the paired differences are to FFVAE (supervised)


def seed_interval(a: list[np.ndarray], b: list[np.ndarray], *, level: float = 0.95) -> dict:
    """The paired difference a − b over every seed both rows have, with a 95% interval that reflects the
    seed-to-seed spread (docs/method.md §5; its coverage at 3 seeds: results/statistics).

    `a[s]`, `b[s]`: per-sequence values of seed s of two methods on the same held-out sequences. Seed s
    of a is paired with seed s of b, for s < S = min(#a, #b), giving d[s, i] = a_s[i] − b_s[i]. The
    centre is the mean of d. The interval is the wider of two t-intervals about it:
    * over the seeds: half-width t_{(1+level)/2, S−1} · √A, A = var(per-seed means of d) / S;
    * over seeds and sequences: t_{(1+level)/2, ν} · √(A + B), B = var(per-sequence means of d over the
      seeds) / n (the held-out set is a sample too), ν = (A + B)² / (A²/(S − 1) + B²/(n − 1)).
    The first alone misses the sequences' own spread where seeds do not dominate it (coverage 0.86 at
    the smallest seed share measured); the second alone runs short where they do (0.93). `p`: the
    two-sided p-value of "a − b = 0" that matches the interval (the larger of the two t-tests'), `se`
    and `df`: the standard error and degrees of freedom of the wider one. With one paired seed there is
    no interval (`ci95`, `p`, `se` None: the seed-to-seed spread is unknown)."""
    seeds = min(len(a), len(b))
    if seeds == 0:
        raise RunError("a paired difference needs at least one seed of each row")
    rows = []
    for s in range(seeds):
        x, y = np.asarray(a[s], np.float64), np.asarray(b[s], np.float64)
        if x.shape != y.shape or (rows and x.shape != rows[0].shape):
            other = y.shape[0] if x.shape != y.shape else rows[0].shape[0]
            raise RunError(
                f"seed {s} of the two rows scored different sequences ({x.shape[0]} against {other} values): "
                "re-evaluate both under one protocol"
            )
        rows.append(x - y)
    d = np.stack(rows)
    per_seed = d.mean(axis=1)
    out = {
        "mean": float(d.mean()),
        "seeds": seeds,
        "per_seed": [float(v) for v in per_seed],
        "ci95": None,
        "p": None,
        "se": None,
        "df": None,
    }
    if seeds < 2:
        return out
    n = d.shape[1]
    var_seeds = float(per_seed.var(ddof=1) / seeds)
    var_sequences = float(d.mean(axis=0).var(ddof=1) / n) if n > 1 else 0.0
    both = var_seeds + var_sequences
    denominator = var_seeds**2 / (seeds - 1) + (var_sequences**2 / (n - 1) if n > 1 else 0.0)
    welch_df = both**2 / denominator if denominator > 0 else float(seeds - 1)
    quantile = 0.5 + level / 2
    candidates = [(math.sqrt(var_seeds), float(seeds - 1)), (math.sqrt(both), welch_df)]
    halves = [scipy_stats.t.ppf(quantile, df) * se for se, df in candidates]
    se, df = candidates[int(np.argmax(halves))]
    half = float(max(halves))
    out.update(se=se, df=df, ci95=[out["mean"] - half, out["mean"] + half])

    def two_sided(se: float, df: float) -> float:
        if se == 0:
            return 1.0 if out["mean"] == 0 else 0.0
        return float(2 * scipy_stats.t.sf(abs(out["mean"]) / se, df))

    out["p"] = max(two_sided(*c) for c in candidates)
    return out


PROBES = (
    "equivariance_error",
    "equivariance_error_linear",
    "equivariance_error_identity",
    "equivariance_error_changed",
    "equivariance_error_identity_changed",
    "equivariance_error_extrapolation",
    "equivariance_error_extrapolation_linear",
    "equivariance_error_extrapolation_identity",
)


def run_columns(result: dict) -> dict[str, tuple[float, np.ndarray | None]]:
    """Every scored number of one run's eval.json: column id → (the run's value, its per-sequence
    values or None). Column ids: `<metric>/<transformation or pair>` and `log_likelihood`;
    `equivariance_ratio/<t>` is E_k over the same run's identity score and `equivariance_ratio_changed/<t>`
    the same over the pixels that change (no per-sequence values)."""
    per = result.get("per_sequence", {})
    ks = np.asarray(per.get("k", []))

    def seqs(name: str, select) -> np.ndarray | None:
        return select(np.asarray(per[name])) if name in per else None

    cols: dict[str, tuple[float, np.ndarray | None]] = {}
    for metric in PROBES:
        for k, t in enumerate(result["transformations"]):
            entry = result["transformations"][t]
            if metric in entry:
                cols[f"{metric}/{t}"] = (entry[metric], seqs(metric, lambda v, k=k: v[ks == k]))
    for t, entry in result["transformations"].items():
        if entry.get("equivariance_error_identity"):
            cols[f"equivariance_ratio/{t}"] = (entry["equivariance_error"] / entry["equivariance_error_identity"], None)
        if entry.get("equivariance_error_identity_changed") and "equivariance_error_changed" in entry:
            ratio = entry["equivariance_error_changed"] / entry["equivariance_error_identity_changed"]
            cols[f"equivariance_ratio_changed/{t}"] = (ratio, None)
    for i, (pair, entry) in enumerate(result.get("equivariance_error_composition", {}).items()):
        for metric, value in entry.items():
            name = metric.replace("equivariance_error", "equivariance_error_composition")
            cols[f"{name}/{pair}"] = (value, seqs(name, lambda v, i=i: v[:, i]))
    cols["log_likelihood"] = (result["log_likelihood"], seqs("log_likelihood", lambda v: v))
    if "effective_sample_size" in result:
        cols["effective_sample_size"] = (result["effective_sample_size"], None)
    if "likelihood_drift" in result:
        cols["likelihood_drift"] = (result["likelihood_drift"]["mean_abs_difference"], None)
    sparse = result.get("sparse_controls")
    if sparse:
        for metric in ("precision", "recall", "f1"):
            cols[f"spike_{metric}"] = (sparse["spikes"][metric], None)
        per_sparse = sparse["per_sequence"]
        for name, key in (("inferred", "equivariance_error"), ("identity", "equivariance_error_identity")):
            value = sparse["composition_error"][key]
            cols[f"controls_error/{name}"] = (value, np.asarray(per_sparse[key]))
        cols["controls_error/true_active"] = (sparse["composition_error"]["equivariance_error_true_active"], None)
    for flow, f in result.get("flows", {}).items():
        for metric in ("min_eigenvalue", "logdet_gap"):
            if f.get(metric) is not None:
                cols[f"{metric}/{flow}"] = (f[metric], None)
    return cols


def summarise(results: dict[str, list[dict]]) -> dict:
    """Per method: its label, supervision and probe, and every column of its runs' eval.json as
    mean/std/values over seeds; for every method but FFVAE, `difference_to_ffvae` (`seed_interval`
    of method − FFVAE over the seeds both have) where both carry per-sequence values."""
    columns = {name: [run_columns(r) for r in runs] for name, runs in results.items()}
    rows = {}
    for name, runs in results.items():
        method = methods.get_method(name)
        row: dict = {
            "label": method.label,
            "supervision": method.supervision,
            "transformation": runs[0]["transformation"],
            "seeds": len(runs),
            "columns": {},
        }
        ref = columns.get(REFERENCE) if name != REFERENCE else None
        for col in columns[name][0]:
            if not all(col in c for c in columns[name]):
                continue
            stats = seed_stats([c[col][0] for c in columns[name]])
            if ref and all(col in c and c[col][1] is not None for c in columns[name] + ref):
                stats["difference_to_ffvae"] = seed_interval(
                    [c[col][1] for c in columns[name]], [c[col][1] for c in ref]
                )
            row["columns"][col] = stats
        if all("flow_assignment" in r for r in runs):
            row["columns"]["flow_assignment_accuracy"] = seed_stats([r["flow_assignment"]["accuracy"] for r in runs])
        rows[name] = row
    return rows


def _bold(rows: dict, columns: dict[str, list[dict]], col: str, lowest: bool) -> str | None:
    """The method with the best mean in column `col`, if the seed interval of its difference to the
    runner-up excludes zero (None if not, if fewer than two methods have it, with one paired seed, or
    without per-sequence values)."""
    have = [n for n in rows if col in rows[n]["columns"]]
    if len(have) < 2:
        return None
    ranked = sorted(have, key=lambda n: rows[n]["columns"][col]["mean"], reverse=not lowest)
    best, runner_up = ranked[:2]
    a = [c[col][1] for c in columns[best]]
    b = [c[col][1] for c in columns[runner_up]]
    if any(v is None for v in a + b):
        return None
    ci = seed_interval(a, b)["ci95"]
    return best if ci is not None and (ci[0] > 0 or ci[1] < 0) else None


def _cell(stats: dict | None, bold: bool, col: str = "") -> str:
    if stats is None:
        return "—"
    digits = 3 if col.startswith(("equivariance_ratio", "spike_")) else 2 if col == "likelihood_drift" else 1
    text = f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"**{text}**" if bold else text


def _defined_cell(stats: dict | None, col: str) -> str:
    """`_cell` over the seeds where the value is defined (spike precision is undefined, NaN, for a seed
    that never switches a flow on), saying how many were not."""
    if stats is None or all(np.isfinite(stats["values"])):
        return _cell(stats, False, col)
    defined = [v for v in stats["values"] if np.isfinite(v)]
    undefined = f"{len(stats['values']) - len(defined)} of {len(stats['values'])} seeds undefined"
    return f"{_cell(seed_stats(defined), False, col)} ({undefined})" if defined else f"— ({undefined})"


def _interval(stats: dict | None) -> str:
    if stats is None or "difference_to_ffvae" not in stats:
        return "—"
    d = stats["difference_to_ffvae"]
    if d["ci95"] is None:
        return f"{d['mean']:+.1f} (1 seed: no interval)"
    return f"{d['mean']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"


def to_markdown(rows: dict, results: dict[str, list[dict]], transforms: list[str], header: str) -> str:
    """The paper's layout — methods × (supervision, E_k ↓ per transformation, log p(x) ↑) — then the
    new columns (extrapolation, composition, ESS, the estimator's drift); then every probe (own, linear
    shift, identity, E_k / identity, and E_k and identity over the pixels that change) and the paired
    differences to FFVAE with their 95% seed intervals. Bold: the best mean, only where the seed
    interval of its difference to the runner-up excludes zero."""
    pairs = sorted(
        {
            c.split("/", 1)[1]
            for r in rows.values()
            for c in r["columns"]
            if c.startswith("equivariance_error_composition/")
        }
    )
    paper = [(f"E {t} ↓", f"equivariance_error/{t}", True) for t in transforms] + [
        ("log p(x) ↑", "log_likelihood", False)
    ]
    new = [(f"E {t} extrap. ↓", f"equivariance_error_extrapolation/{t}", True) for t in transforms]
    new += [(f"E {p} ↓", f"equivariance_error_composition/{p}", True) for p in pairs]
    new.append(("ESS", "effective_sample_size", None))
    new.append(("drift S→S'", "likelihood_drift", None))
    new = [c for c in new if any(c[1] in r["columns"] for r in rows.values())]
    cols = paper + new
    columns = {name: [run_columns(r) for r in runs] for name, runs in results.items()}
    winners = {col: (_bold(rows, columns, col, low) if low is not None else None) for _, col, low in cols}

    def table(columns, cell):
        out = [
            "| Method | Supervision | " + " | ".join(c[0] for c in columns) + " |",
            "|---|---|" + "---:|" * len(columns),
        ]
        for name, r in rows.items():
            label = r["label"] + (" †" if r["transformation"] == "linear shift" else "")
            label += " ‡" if r.get("ablation_of") else ""
            cells = [cell(name, r, col) for _, col, _ in columns]
            out.append(f"| {label} | {r['supervision']} | " + " | ".join(cells) + " |")
        return out

    lines = [header, ""]
    lines += table(cols, lambda name, r, col: _cell(r["columns"].get(col), winners[col] == name, col))
    probes = [
        (f"E {t} {probe}", f"{metric}/{t}", True)
        for t in transforms
        for probe, metric in (
            ("linear", "equivariance_error_linear"),
            ("identity", "equivariance_error_identity"),
            ("changed px", "equivariance_error_changed"),
            ("identity changed px", "equivariance_error_identity_changed"),
        )
    ]
    probes += [(f"E {t} / identity", f"equivariance_ratio/{t}", None) for t in transforms]
    probes += [(f"E {t} / identity, changed px", f"equivariance_ratio_changed/{t}", None) for t in transforms]
    probes = [c for c in probes if any(c[1] in r["columns"] for r in rows.values())]
    thresholds = sorted({r.get("changed_pixel_threshold") for runs in results.values() for r in runs} - {None})
    changed = f" (some channel by more than {', '.join(f'{t:g}' for t in thresholds)})" if thresholds else ""
    lines += [
        "",
        "Every probe for every model (E_k with the best linear shift and with the identity, z_t = μ(x_0); "
        f"over the pixels that change between x_0 and x_t{changed}; E_k over the same model's identity score, where a column "
        "with every method at 0.9 or above, or a comparison of two methods both there, ranks reconstruction, not "
        "equivariance; the same ratio over the changed pixels):",
        "",
    ]
    lines += table(probes, lambda name, r, col: _cell(r["columns"].get(col), False, col))
    if REFERENCE in rows:
        diffs = [c for c in cols + probes if c[2] is not None]
        lines += [
            "",
            "Paired difference to FFVAE (method − FFVAE; mean [95% t-interval over the seeds both have], each seed's "
            "difference the mean over the same held-out sequences):",
            "",
        ]
        lines += table(diffs, lambda name, r, col: _interval(r["columns"].get(col)))
    lines += [
        "",
        (
            "E: equivariance error Σ_t ‖dec(z_t) − x_t‖₁ per held-out sequence (docs/method.md §5), lower is better; extrap.: "
            "frames T+1 … 2T; a + b: two transformations together; log p(x): mixture-proposal importance-sampled "
            "nats per image, higher is better; ESS: its mean effective sample size. Mean ± std over seeds; bold: the "
            "best mean where the 95% seed t-interval of its paired difference to the runner-up excludes zero."
        ),
        "† no learned transformation: z_t = μ(x_0) + Δ_{k,t}, the best linear shift fitted on training sequences.",
    ]
    ablations = [r["label"] for r in rows.values() if r.get("ablation_of")]
    if ablations:
        lines.append(
            "‡ ablation (" + "; ".join(ablations) + "): the FFVAE with objective terms removed or down-weighted, "
            "trained at the FFVAE's learning rate; the rollout VAE is what FFVAE and PoFlow share."
        )
    sparse = [
        ("spike precision ↑", "spike_precision"),
        ("spike recall ↑", "spike_recall"),
        ("spike F1 ↑", "spike_f1"),
        ("E along inferred controls ↓", "controls_error/inferred"),
        ("E identity", "controls_error/identity"),
        ("E along true active sets", "controls_error/true_active"),
    ]
    if any("spike_f1" in r["columns"] for r in rows.values()):
        lines += [
            "",
            "Sparse controls on the composed test sequences (a model that composes its flows step by step, "
            "docs/method.md §8): spikes of the flow matched to each transformation against the true active sets; "
            "E over frames 1…T following the controls the model reads off each sequence, with no motion, and along "
            "the true active sets at control 1:",
            "",
        ]
        sparse_rows = {n: r for n, r in rows.items() if "spike_f1" in r["columns"]}
        lines += [
            "| Method | " + " | ".join(c[0] for c in sparse) + " |",
            "|---|" + "---:|" * len(sparse),
        ]
        for r in sparse_rows.values():
            cells = [_defined_cell(r["columns"].get(col), col) for _, col in sparse]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Its log p(x) draws every importance sample from its own proposal (no encoder half: docs/method.md §8).",
        ]
    inferred = [
        (r["label"], r["columns"]["flow_assignment_accuracy"])
        for r in rows.values()
        if "flow_assignment_accuracy" in r["columns"]
    ]
    if inferred:
        accuracies = "; ".join(f"{label} {s['mean']:.3f} ± {s['std']:.3f}" for label, s in inferred)
        lines.append(
            "Models that do not observe k use the flow their q(k | sequence) infers, and their likelihood "
            f"marginalises k (docs/method.md §5). Matched accuracy of the inferred flow: {accuracies}."
        )
    return "\n".join(lines) + "\n"
