"""Which 95% interval of a paired difference covers the truth at 3 seeds? A simulation at the variance
components the MNIST table measured.

    python results/statistics/coverage.py [--comparisons 2000] [--resamples 2000] [--settings NAME ...]
        [--measured coverage.json]

A paired difference of methods A and B on one column is a (seeds × held-out sequences) array
d[s, i] = δ + u_s + v_i + w_si: u_s the seed-to-seed spread (the two methods' seed effects do not
cancel: their seeds are independent trainings), v_i the sequences' own effect (the same for every seed)
and w_si the rest. Each component's variance is estimated from the committed records of
results/mnist (two-way ANOVA of each paired-by-seed FFVAE − baseline difference, every E_k column and
the likelihood), and `--comparisons` synthetic differences with δ = 0 are drawn at the median and at
the smallest and the largest seed share measured (and with no seed variance at all). Five intervals are scored by how often they contain 0:

* `pooled bootstrap`: the table's first edition (`reporting.table.paired_bootstrap`): seeds and
  sequences resampled together, the same sequence indices for every drawn seed;
* `two-level bootstrap`: seeds resampled, then sequences within each drawn seed independently;
* `seed t-interval`: the mean of the per-seed mean differences ± t(0.975, S − 1) · sd / √S;
* `seed + sequence t-interval`: the same centre ± t(0.975, ν) · √(a + b), a = sd²_seeds / S and
  b = sd²_sequences / n, sd_sequences that of the per-sequence means over seeds (the held-out set is a
  sample too; the residual is counted in both terms, so it errs wide), ν = (a + b)² / (a² / (S − 1) +
  b² / (n − 1)) (Welch–Satterthwaite);
* `wider of the two t-intervals`: the union of the last two (the package's `reporting.table.seed_interval`):
  the seed t-interval where seeds dominate, widened where the held-out sequences' own spread is not
  small beside them.

Writes coverage.json and coverage.md next to this file. `--settings` runs some settings only (the
others' results are kept from coverage.json); `--measured coverage.json` takes the variance components
from that file's `measured` list instead of the records (which a later table replaces).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
RECORDS = HERE.parent / "mnist" / "runs"
SEEDS = 3


def _columns(record: dict) -> dict[str, np.ndarray]:
    per = record["per_sequence"]
    ks = np.asarray(per["k"])
    cols = {f"E/{t}": np.asarray(per["equivariance_error"])[ks == k] for k, t in enumerate(record["transformations"])}
    cols["log p(x)"] = np.asarray(per["log_likelihood"])
    return cols


def variance_components(a: str, b: str) -> list[dict]:
    """Per column of methods a − b (paired by seed index): the seed, sequence and residual variances."""
    runs = {m: [json.loads((RECORDS / m / f"seed{s}" / "eval.json").read_text()) for s in range(SEEDS)] for m in (a, b)}
    out = []
    for column in _columns(runs[a][0]):
        d = np.stack([_columns(ra)[column] - _columns(rb)[column] for ra, rb in zip(runs[a], runs[b], strict=True)])
        s, n = d.shape
        row, col, grand = d.mean(1, keepdims=True), d.mean(0, keepdims=True), d.mean()
        resid = d - row - col + grand
        var_w = float(np.sum(resid**2) / ((s - 1) * (n - 1)))
        var_u = max(float(np.var(row, ddof=1)) - var_w / n, 0.0)
        var_v = max(float(np.var(col, ddof=1)) - var_w / s, 0.0)
        out.append({"a": a, "b": b, "column": column, "sequences": n, "var_seed": var_u, "var_sequence": var_v,
                    "var_residual": var_w, "seed_share": var_u / (var_u + (var_v + var_w) / n)})  # fmt: skip
    return out


def intervals(d: np.ndarray, resamples: int, rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """The three 95% intervals of the mean of d (seeds × sequences)."""
    s, n = d.shape
    seed_idx = rng.integers(0, s, size=(resamples, s))
    seq_idx = rng.integers(0, n, size=(resamples, n))
    pooled = d[seed_idx[:, :, None], seq_idx[:, None, :]].mean(axis=(1, 2))
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=(resamples, s)) / n  # sequences within each seed
    two_level = np.einsum("rsn,rsn->r", weights, d[seed_idx]) / s
    means, per_sequence = d.mean(1), d.mean(0)
    t = stats.t.ppf(0.975, s - 1)
    half = t * means.std(ddof=1) / np.sqrt(s)
    a, b = means.var(ddof=1) / s, per_sequence.var(ddof=1) / n
    nu = (a + b) ** 2 / (a**2 / (s - 1) + b**2 / (n - 1))
    both = stats.t.ppf(0.975, nu) * np.sqrt(a + b)
    return {
        "pooled bootstrap": tuple(np.percentile(pooled, [2.5, 97.5])),
        "two-level bootstrap": tuple(np.percentile(two_level, [2.5, 97.5])),
        "seed t-interval": (means.mean() - half, means.mean() + half),
        "seed + sequence t-interval": (means.mean() - both, means.mean() + both),
        "wider of the two t-intervals": (means.mean() - max(half, both), means.mean() + max(half, both)),
    }


def coverage(var_seed: float, var_sequence: float, var_residual: float, n: int, comparisons: int, resamples: int,
             seed: int) -> dict[str, float]:  # fmt: skip
    rng = np.random.default_rng(seed)
    hits: dict[str, int] = {}
    for _ in range(comparisons):
        d = (
            rng.normal(0, np.sqrt(var_seed), (SEEDS, 1))
            + rng.normal(0, np.sqrt(var_sequence), (1, n))
            + rng.normal(0, np.sqrt(var_residual), (SEEDS, n))
        )
        for name, (lo, hi) in intervals(d, resamples, rng).items():
            hits[name] = hits.get(name, 0) + int(lo <= 0.0 <= hi)
    return {name: count / comparisons for name, count in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comparisons", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--settings", nargs="+", default=None, help="run these settings only (default: all)")
    parser.add_argument("--measured", type=Path, default=None, help="variance components from this coverage.json")
    args = parser.parse_args()
    if args.measured is not None:
        components = json.loads(args.measured.read_text())["measured"]
    else:
        components = [
            c for b in ("poflow", "poflow-authors", "vae", "slowvae") for c in variance_components("ffvae", b)
        ]
    shares = np.array([c["seed_share"] for c in components])
    settings = {
        "median seed share": components[int(np.argsort(shares)[len(shares) // 2])],
        "largest seed share": components[int(np.argmax(shares))],
        "smallest seed share": components[int(np.argmin(shares))],
        "no seed variance": {**components[0], "var_seed": 0.0, "seed_share": 0.0},
    }
    unknown = set(args.settings or ()) - set(settings)
    if unknown:
        raise SystemExit(f"unknown --settings {sorted(unknown)}; choose from {list(settings)}")
    previous = HERE / "coverage.json"
    results = {}
    if args.settings and previous.exists():
        results = {k: v for k, v in json.loads(previous.read_text())["settings"].items() if k in settings}
    seeds = {"median seed share": 0, "largest seed share": 1, "no seed variance": 2, "smallest seed share": 3}
    for label, c in settings.items():
        if args.settings and label not in args.settings:
            continue
        cov = coverage(c["var_seed"], c["var_sequence"], c["var_residual"], c["sequences"], args.comparisons,
                       args.resamples, seed=seeds[label])  # fmt: skip
        results[label] = {"components": c, "coverage": cov}
        print(label, f"({c['a']} − {c['b']}, {c['column']}):", {k: round(v, 3) for k, v in cov.items()})
    half_width = 1.96 * np.sqrt(0.95 * 0.05 / args.comparisons)
    summary = {"comparisons": args.comparisons, "resamples": args.resamples, "seeds": SEEDS,
               "monte_carlo_half_width": half_width, "measured": components, "settings": results}  # fmt: skip
    (HERE / "coverage.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# Coverage of 95% intervals at {SEEDS} seeds ({args.comparisons} synthetic comparisons, true difference 0,"
        f" {args.resamples} resamples; Monte Carlo ±{half_width:.3f})",
        "",
        "| variance components | seed share | pooled bootstrap | two-level bootstrap | seed t-interval "
        "| seed + sequence t-interval | wider of the two t-intervals |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label in [name for name in settings if name in results]:
        r = results[label]
        c, cov = r["components"], r["coverage"]
        lines.append(
            f"| {label} ({c['a']} − {c['b']}, {c['column']}) | {c['seed_share']:.2f} | "
            + " | ".join(f"{v:.3f}" for v in cov.values())
            + " |"
        )
    lines += ["", "Seed share: the seed variance's part of the variance of the mean over one seed's sequences."]
    (HERE / "coverage.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
