"""STA's E_k at unit control: the FFVAE's own procedure applied to STA, a like-for-like comparison.

    python results/sta/unit_control.py --runs RUNS/single

STA's E_k in compare.md follows the controls it reads off each test sequence (which flows are on at
each step and how fast they run, inferred from the frames it is scored against). The weak FFVAE infers
only *which* flow a sequence uses (argmax q(k | x̄)) and rolls it out at its one learned speed. This
script scores each trained STA model (the checkpoints of the runs whose records are in single/runs/)
on the same 500 single-transformation MNIST test sequences the same way: the flow the sequence uses most
(`flow_posterior_logits`, STA's q(k | x̄)) alone at control 1 from μ(x_0) (`metrics.equivariance_error`,
the function every transport model's E_k comes from). It first re-scores each sequence along the inferred
controls and checks that it reproduces the record's per-sequence E_k (same model, same sequences), then
writes single/unit_control.json and single/unit_control.md: per transformation, each seed's mean, and the
paired differences to the weak and supervised FFVAE with the seed-level interval of docs/method.md §5
(`reporting.table.seed_interval`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from eqx_ffvae import data, metrics, runs
from eqx_ffvae.reporting.records import lr_name
from eqx_ffvae.reporting.table import seed_interval
from eqx_ffvae.runs.inputs import eval_batches

HERE = Path(__file__).resolve().parent
SINGLE = HERE / "single"
SECOND_EDITION = HERE.parent / "second-edition" / "mnist"
OTHERS = {"ffvae-weak": "FFVAE (weak)", "ffvae": "FFVAE"}


@eqx.filter_jit
def _score(model, frames):
    def one(x):
        flow = jnp.argmax(model.flow_posterior_logits(x))
        return flow, metrics.equivariance_error(model, x, flow), metrics.equivariance_error_controlled(model, x)

    return jax.lax.map(one, frames)


def score_seed(run_dir: Path, record: dict) -> dict:
    model, spec = runs.load_run(run_dir)
    single = dataclasses.replace(spec, dataset=data.dataset_info(spec.dataset).composed_from)
    ev = single.eval
    batches = eval_batches(single, "test", -(-ev.eval_sequences // ev.eval_batch_size))
    flows, unit, controlled = zip(*(_score(model, jnp.asarray(b["frames"])) for b in batches))
    ks = np.concatenate([np.asarray(b["k"]) for b in batches])
    controlled = np.concatenate(controlled)
    per = record["per_sequence"]
    if not np.array_equal(ks, per["k"]) or not np.allclose(controlled, per["equivariance_error"], rtol=1e-3):
        raise SystemExit(
            f"{run_dir} does not reproduce its record's per-sequence E_k (max |Δ| "
            f"{np.max(np.abs(controlled - per['equivariance_error'])):.3g}): not the recorded model or sequences"
        )
    return {
        "k": ks.tolist(),
        "flow": np.concatenate(flows).tolist(),
        "equivariance_error": np.concatenate(unit).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="the --out folder of the single-control compare")
    args = parser.parse_args()
    seeds = sorted(SINGLE.glob("runs/sta/seed*/eval.json"))
    records = [json.loads(p.read_text()) for p in seeds]
    configs = [json.loads((p.parent / "config.json").read_text()) for p in seeds]
    scored = [
        score_seed(args.runs / "sta" / lr_name(c["learning_rate"]) / f"seed{c['seed']}", r)
        for c, r in zip(configs, records)
    ]
    names = list(records[0]["transformations"])
    others = {
        m: [json.loads((SECOND_EDITION / "runs" / m / f"seed{s}" / "eval.json").read_text()) for s in range(len(seeds))]
        for m in OTHERS
    }

    def by_k(values, ks, k):
        return np.asarray(values)[np.asarray(ks) == k]

    out = {"seeds": [c["seed"] for c in configs], "transformations": {}}
    for k, name in enumerate(names):
        unit = [by_k(s["equivariance_error"], s["k"], k) for s in scored]
        read = [by_k(r["per_sequence"]["equivariance_error"], r["per_sequence"]["k"], k) for r in records]
        entry = {
            "unit_control": [float(v.mean()) for v in unit],
            "inferred_controls": [float(v.mean()) for v in read],
        }
        for m in OTHERS:
            theirs = [by_k(r["per_sequence"]["equivariance_error"], r["per_sequence"]["k"], k) for r in others[m]]
            entry[m] = [float(v.mean()) for v in theirs]
            for label, ours in (("unit_control", unit), ("inferred_controls", read)):
                diff = seed_interval(ours, theirs)
                entry[f"{label}_minus_{m}"] = {"mean": diff["mean"], "ci95": diff["ci95"]}
        out["transformations"][name] = entry
    out["per_sequence"] = scored
    (SINGLE / "unit_control.json").write_text(json.dumps(out, indent=2))

    def fmt(d: dict) -> str:
        lo, hi = d["ci95"]
        return f"{d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]"

    lines = [
        "# STA's E_k at unit control against the FFVAE's (issue 45)",
        "",
        "Written by `python results/sta/unit_control.py --runs RUNS/single` (module doc: what is scored). "
        "E_k on the 500 single-transformation MNIST test sequences, mean over seeds (each seed's value in "
        "unit_control.json); differences paired by seed with the seed-level 95% interval of docs/method.md §5.",
        "",
        "| transformation | STA, controls read off the sequence | STA, its inferred flow at control 1 | FFVAE (weak) "
        "| FFVAE | unit control − weak | unit control − FFVAE | read controls − weak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in out["transformations"].items():
        lines.append(
            f"| {name} | {np.mean(e['inferred_controls']):.1f} | {np.mean(e['unit_control']):.1f} | "
            f"{np.mean(e['ffvae-weak']):.1f} | {np.mean(e['ffvae']):.1f} | {fmt(e['unit_control_minus_ffvae-weak'])} | "
            f"{fmt(e['unit_control_minus_ffvae'])} | {fmt(e['inferred_controls_minus_ffvae-weak'])} |"
        )
    (SINGLE / "unit_control.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
