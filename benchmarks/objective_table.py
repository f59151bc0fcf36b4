"""Which objective: kl0, the flow term, reconstruction, E_k and log p(x) of each FFVAE objective and its
references, from a comparison's records (docs/method.md §4, "the rate tax").

Training terms are each record's mean over its last 100 training steps (`metrics_summary.json`), in
nats per sequence; E_k and log p(x) are its held-out evaluation (`eval.json`). Over seeds: the mean, the
sample standard deviation and a 95% t-interval of the mean over seed means (t with n − 1 degrees of
freedom; none for one seed).

    python benchmarks/objective_table.py --results results/mnist --out results/mnist/objectives
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

ROWS = {
    "ffvae": ("literal ELBO (per-frame KLs)", "kl_flow"),
    "ffvae-authors": ("authors' trainer (their surrogate)", "rho_kl"),
    "ffvae-sde": ("path-space ELBO (Girsanov KL)", "kl_flow"),
    "ffvae-rollout-kl0": ("rollout VAE, z_0 KL × (T+1)", None),
    "ffvae-rollout": ("rollout VAE (− flow KL − HJ)", None),
    "poflow": ("PoFlow", None),
    "poflow-authors": ("PoFlow, authors' protocol (one frame per step)", None),
}


def summary(values: list[float]) -> dict:
    """Mean, standard deviation and the 95% t-interval of the mean over seeds."""
    a = np.asarray(values, np.float64)
    out = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None, "seeds": int(a.size)}
    if a.size > 1:
        half = float(stats.t.ppf(0.975, a.size - 1)) * out["std"] / math.sqrt(a.size)
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out


def collect(results: Path) -> dict:
    table = {}
    for method, (label, flow_term) in ROWS.items():
        folder = results / "runs" / method
        seeds = sorted(folder.glob("seed*/eval.json"))
        if not seeds:
            continue
        evals = [json.loads(p.read_text()) for p in seeds]
        terms = [json.loads((p.parent / "metrics_summary.json").read_text())["mean_of_last_100"] for p in seeds]
        names = list(evals[0]["transformations"])
        row = {
            "label": label,
            "seeds": len(seeds),
            "kl0": summary([t["kl0"] for t in terms]),
            "flow_term": summary([t[flow_term] for t in terms]) if flow_term else None,
            "flow_term_name": flow_term,
            "recon": summary([t["recon"] for t in terms]),
            "log_likelihood": summary([e["log_likelihood"] for e in evals]),
            "equivariance_error": {
                k: summary([e["transformations"][k]["equivariance_error"] for e in evals]) for k in names
            },
        }
        per_frame = [t for t in terms[0] if t.startswith(("kl_t", "rho_kl_t"))]
        if per_frame:
            row["flow_term_per_frame"] = {t: summary([s[t] for s in terms])["mean"] for t in per_frame}
        table[method] = row
    return table


def markdown(table: dict) -> str:
    def fmt(s, digits=1):
        if s is None:
            return "—"
        spread = f" ± {s['std']:.{digits}f}" if s["std"] is not None else ""
        return f"{s['mean']:.{digits}f}{spread}"

    def interval(s):
        return f"{s['mean']:.1f} [{s['ci95'][0]:.1f}, {s['ci95'][1]:.1f}]" if "ci95" in s else f"{s['mean']:.1f}"

    names = list(next(iter(table.values()))["equivariance_error"])
    lines = [
        "| method | seeds | kl0 | flow term | reconstruction | "
        + " | ".join(f"E {n}" for n in names)
        + " | log p(x) |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(names) + "---:|",
    ]
    for method, row in table.items():
        flow = f"{fmt(row['flow_term'])} ({row['flow_term_name']})" if row["flow_term"] else "—"
        e = " | ".join(interval(row["equivariance_error"][n]) for n in names)
        lines.append(
            f"| {row['label']} (`{method}`) | {row['seeds']} | {fmt(row['kl0'])} | {flow} | {fmt(row['recon'])} | "
            f"{e} | {fmt(row['log_likelihood'])} |"
        )
    lines += [
        "",
        "Training terms: mean of the last 100 steps, nats per sequence, mean ± std over seeds. E_k: mean over "
        "seeds [95% t-interval of the mean over seed means]. log p(x): held-out, nats per image, S as the "
        "table's preset. PoFlow's authors' protocol reconstructs one frame per step (its recon is not a sequence's).",
    ]
    per_frame = {m: r["flow_term_per_frame"] for m, r in table.items() if "flow_term_per_frame" in r}
    if per_frame:
        lines += ["", "Flow term per frame (mean over seeds):", ""]
        for method, frames in per_frame.items():
            lines.append(f"- `{method}`: " + ", ".join(f"{k} {v:.2f}" for k, v in frames.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a compare --results folder, e.g. results/mnist")
    parser.add_argument("--out", type=Path, default=None, help="folder for objectives.json and objectives.md")
    args = parser.parse_args()
    if not (args.results / "runs").is_dir():
        raise SystemExit(f"{args.results / 'runs'} does not exist: pass a compare --results folder")
    table = collect(args.results)
    text = markdown(table)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "objectives.json").write_text(json.dumps(table, indent=1))
        (args.out / "objectives.md").write_text(text)


if __name__ == "__main__":
    main()
