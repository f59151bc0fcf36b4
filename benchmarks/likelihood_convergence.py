"""S-convergence of the mixture-proposal likelihood (docs/method.md §5) on a trained run's held-out sequences.

    python benchmarks/likelihood_convergence.py --run runs/quick --sequences 20 --samples 100 1000

Prints, per S, the mean log p(x_t) (nats per image) over the first `--sequences` held-out sequences,
the mean effective sample size, and the mean and largest per-sequence difference to the largest S;
then the same per frame (which frames have not converged); writes JSON
next to the run (`likelihood_convergence.json`) or to --json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _util import print_table
from tqdm import tqdm

from eqx_ffvae import metrics, runs
from eqx_ffvae.evaluation import infers_flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--sequences", type=int, default=20)
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model, spec = runs.load_run(args.run)
    batch = runs.eval_batches(spec, "test", -(-args.sequences // spec.eval.eval_batch_size))
    frames = np.concatenate([b["frames"] for b in batch])[: args.sequences]
    ks = np.concatenate([b["k"] for b in batch])[: args.sequences]

    @eqx.filter_jit
    def one(m, x, k, key, num_samples):
        if infers_flow(m):
            return metrics.marginal_log_likelihood(m, x, key=key, num_samples=num_samples)
        return metrics.log_likelihood(m, x, k, key=key, num_samples=num_samples)

    per_s = {}
    for num_samples in args.samples:
        lls, ess = [], []
        for i in tqdm(range(len(frames)), desc=f"S={num_samples}", leave=False):
            ll, e = one(model, jnp.asarray(frames[i]), jnp.asarray(ks[i]), jr.fold_in(jr.key(1), i), num_samples)
            lls.append(np.asarray(ll)), ess.append(np.asarray(e))
        per_s[num_samples] = (np.stack(lls), np.stack(ess))
    top = max(args.samples)
    rows = []
    for num_samples, (ll, ess) in per_s.items():
        diff = ll.mean(1) - per_s[top][0].mean(1)
        rows.append(
            {
                "S": num_samples,
                "log p(x)": float(ll.mean()),
                "mean ESS": float(ess.mean()),
                f"mean |Δ| to S={top}": float(np.abs(diff).mean()),
                f"max |Δ| to S={top}": float(np.abs(diff).max()),
            }
        )
    print(f"{spec.method} ({args.run}), {len(frames)} held-out sequences, nats per image (mean over frames)")
    print_table(rows, list(rows[0]))
    per_frame = [
        {"frame": t}
        | {
            f"|Δ| S={s}": float(np.abs(ll[:, t] - per_s[top][0][:, t]).mean())
            for s, (ll, _) in per_s.items()
            if s != top
        }
        | {f"ESS S={s}": float(ess[:, t].mean()) for s, (_, ess) in per_s.items()}
        for t in range(frames.shape[1])
    ]
    print(f"per frame: mean |Δ| to S={top} over sequences, and mean ESS")
    print_table(per_frame, list(per_frame[0]))
    out = args.json or args.run / "likelihood_convergence.json"
    record = {
        "run": str(args.run),
        "method": spec.method,
        "sequences": len(frames),
        "rows": rows,
        "per_frame": per_frame,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
