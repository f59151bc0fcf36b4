"""The comparison table: every scored column of a run's eval.json, their mean ± std over seeds, the
paired differences to the FFVAE with bootstrap intervals, and the markdown of compare.md."""

from __future__ import annotations

import numpy as np

from .. import methods


def seed_stats(values: list[float]) -> dict:
    arr = np.asarray(values, np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}


REFERENCE = "ffvae"  # the paired differences are to FFVAE (supervised)
RESAMPLES = 2000


def paired_bootstrap(a: list[np.ndarray], b: list[np.ndarray], *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean of a − b over seeds and held-out sequences, with a 95% percentile bootstrap interval.

    `a[s]`, `b[s]`: per-sequence values of seed s of two methods on the same held-out sequences (the
    run's fixed evaluation set). Each resample draws seeds and sequences with replacement (the same
    sequence indices for every seed, as the seeds score the same sequences) and averages a − b; so
    the interval covers the variation over both. Seeds are paired by index (the first min(#a, #b))."""
    seeds = min(len(a), len(b))
    diff = np.stack([np.asarray(a[i], np.float64) - np.asarray(b[i], np.float64) for i in range(seeds)])
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, seeds, size=(resamples, seeds))
    seq_idx = rng.integers(0, diff.shape[1], size=(resamples, diff.shape[1]))
    means = diff[seed_idx[:, :, None], seq_idx[:, None, :]].mean(axis=(1, 2))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)]}


PROBES = (
    "equivariance_error",
    "equivariance_error_linear",
    "equivariance_error_identity",
    "equivariance_error_extrapolation",
    "equivariance_error_extrapolation_linear",
    "equivariance_error_extrapolation_identity",
)


def run_columns(result: dict) -> dict[str, tuple[float, np.ndarray | None]]:
    """Every scored number of one run's eval.json: column id → (the run's value, its per-sequence
    values or None). Column ids: `<metric>/<transformation or pair>` and `log_likelihood`."""
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
    for i, (pair, entry) in enumerate(result.get("equivariance_error_composition", {}).items()):
        for metric, value in entry.items():
            name = metric.replace("equivariance_error", "equivariance_error_composition")
            cols[f"{name}/{pair}"] = (value, seqs(name, lambda v, i=i: v[:, i]))
    cols["log_likelihood"] = (result["log_likelihood"], seqs("log_likelihood", lambda v: v))
    if "effective_sample_size" in result:
        cols["effective_sample_size"] = (result["effective_sample_size"], None)
    for flow, f in result.get("flows", {}).items():
        for metric in ("min_eigenvalue", "logdet_gap"):
            if f.get(metric) is not None:
                cols[f"{metric}/{flow}"] = (f[metric], None)
    return cols


def summarise(results: dict[str, list[dict]]) -> dict:
    """Per method: its label, supervision and probe, and every column of its runs' eval.json as
    mean/std/values over seeds; for every method but FFVAE, `difference_to_ffvae` (`paired_bootstrap`
    of method − FFVAE over seeds and held-out sequences) where both carry per-sequence values."""
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
                stats["difference_to_ffvae"] = paired_bootstrap(
                    [c[col][1] for c in columns[name]], [c[col][1] for c in ref]
                )
            row["columns"][col] = stats
        if all("flow_assignment" in r for r in runs):
            row["columns"]["flow_assignment_accuracy"] = seed_stats([r["flow_assignment"]["accuracy"] for r in runs])
        rows[name] = row
    return rows


def _bold(rows: dict, columns: dict[str, list[dict]], col: str, lowest: bool) -> str | None:
    """The method with the best mean in column `col`, if the paired interval of its difference to the
    runner-up excludes zero (None if not, if fewer than two methods have it, or without per-sequence values)."""
    have = [n for n in rows if col in rows[n]["columns"]]
    if len(have) < 2:
        return None
    ranked = sorted(have, key=lambda n: rows[n]["columns"][col]["mean"], reverse=not lowest)
    best, runner_up = ranked[:2]
    a = [c[col][1] for c in columns[best]]
    b = [c[col][1] for c in columns[runner_up]]
    if any(v is None for v in a + b):
        return None
    lo, hi = paired_bootstrap(a, b)["ci95"]
    return best if lo > 0 or hi < 0 else None


def _cell(stats: dict | None, bold: bool) -> str:
    if stats is None:
        return "—"
    text = f"{stats['mean']:.1f} ± {stats['std']:.1f}"
    return f"**{text}**" if bold else text


def _interval(stats: dict | None) -> str:
    if stats is None or "difference_to_ffvae" not in stats:
        return "—"
    d = stats["difference_to_ffvae"]
    return f"{d['mean']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"


def to_markdown(rows: dict, results: dict[str, list[dict]], transforms: list[str], header: str) -> str:
    """The paper's layout — methods × (supervision, E_k ↓ per transformation, log p(x) ↑) — then the
    new columns (extrapolation, composition, ESS); then every probe (own, linear shift, identity) and
    the paired differences to FFVAE with their 95% intervals. Bold: the best mean, only where the
    paired interval of its difference to the runner-up excludes zero."""
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
    lines += table(cols, lambda name, r, col: _cell(r["columns"].get(col), winners[col] == name))
    probes = [
        (f"E {t} {probe}", f"{metric}/{t}", True)
        for t in transforms
        for probe, metric in (("linear", "equivariance_error_linear"), ("identity", "equivariance_error_identity"))
    ]
    lines += [
        "",
        "Every probe for every model (E_k with the best linear shift and with the identity, z_t = μ(x_0)):",
        "",
    ]
    lines += table(probes, lambda name, r, col: _cell(r["columns"].get(col), False))
    if REFERENCE in rows:
        diffs = [c for c in cols + probes if c[2] is not None]
        lines += [
            "",
            "Paired difference to FFVAE (method − FFVAE; mean [95% bootstrap interval] over seeds and held-out sequences):",
            "",
        ]
        lines += table(diffs, lambda name, r, col: _interval(r["columns"].get(col)))
    lines += [
        "",
        (
            "E: equivariance error Σ_t ‖dec(z_t) − x_t‖₁ per held-out sequence (docs/method.md §5), lower is better; extrap.: "
            "frames T+1 … 2T; a + b: two transformations together; log p(x): mixture-proposal importance-sampled "
            "nats per image, higher is better; ESS: its mean effective sample size. Mean ± std over seeds; bold: the "
            "best mean where the paired 95% bootstrap interval of its difference to the runner-up excludes zero."
        ),
        "† no learned transformation: z_t = μ(x_0) + Δ_{k,t}, the best linear shift fitted on training sequences.",
    ]
    ablations = [r["label"] for r in rows.values() if r.get("ablation_of")]
    if ablations:
        lines.append(
            "‡ ablation (" + "; ".join(ablations) + "): the FFVAE with objective terms removed or down-weighted, "
            "trained at the FFVAE's learning rate; the rollout VAE is what FFVAE and PoFlow share."
        )
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
