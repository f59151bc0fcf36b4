"""Learning curves that size a comparison preset: each method's E_k and its own validation loss at
several step counts, on validation sequences (never the test split).

    python benchmarks/learning_curves.py --preset mnist-medium --models ffvae vae \\
        --at 500 1000 2000 4000 6000 8000 --out runs/curves --json results/mnist/learning_curves.json

Each method trains once to the largest step count (resuming `--out/<method>` if it holds a
checkpoint); at every listed step its validation loss (`runs.validation_loss`) and E_k per
transformation (the model's own transformation, or the best linear shift for a model without one;
docs/method.md §5) on the preset's validation sequences are recorded. The JSON is rewritten after
every point, so an interrupted run keeps what it measured and continues from there; the figure
(`--json` with .png) is drawn at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.random as jr
import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _util import print_table

from eqx_ffvae import runs
from eqx_ffvae.evaluation import evaluate, fit_linear_shifts


def point(spec: runs.RunSpec, model, sequences: int) -> dict:
    val = runs.validation_loss(spec, model)
    batches = runs.eval_batches(spec, "validation", -(-sequences // spec.eval.eval_batch_size))
    shifts = fit_linear_shifts(model, runs.eval_batches(spec, "train", spec.eval.shift_batches), len(spec.transforms))
    result = evaluate(
        model, batches, shifts, transform_names=spec.transforms, key=jr.key(runs.EVAL_SEED), num_samples=1
    )
    errors = {t: e["equivariance_error"] for t, e in result["transformations"].items()}
    return {"validation_loss": val["validation_loss"], "equivariance_error": errors}


def draw(curves: dict, path: Path) -> None:
    transforms = list(next(iter(next(iter(curves.values())).values()))["equivariance_error"])
    fig, axes = plt.subplots(1, len(transforms) + 1, figsize=(4 * (len(transforms) + 1), 3.4))
    for method, points in curves.items():
        steps = sorted(int(s) for s in points)
        for ax, t in zip(axes, transforms):
            ax.plot(steps, [points[str(s)]["equivariance_error"][t] for s in steps], "o-", label=method)
        axes[-1].plot(steps, [points[str(s)]["validation_loss"] for s in steps], "o-", label=method)
    for ax, t in zip(axes, transforms):
        ax.set(title=f"E {t} (validation) ↓")
    losses = [p["validation_loss"] for points in curves.values() for p in points.values()]
    # symlog only where the loss spans signs or decades (a diverging run); else a readable linear axis
    spread = min(losses) <= 0 or max(losses) > 10 * min(losses)
    axes[-1].set(title="own validation loss ↓", yscale="symlog" if spread else "linear")
    steps = sorted({int(s) for points in curves.values() for s in points})
    for ax in axes:
        ax.set(xlabel="training steps", xscale="log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def save_terms(run_dir: Path, label: str, path: Path) -> None:
    """Every 100th step's training terms of `run_dir` (metrics.jsonl) as JSON, and a figure of the
    flow-KL term, the training ELBO, the HJ residual and the reconstruction over steps."""
    rows = [r for r in runs.read_metrics(run_dir / "metrics.jsonl") if r["step"] % 100 == 0]
    if not rows:
        return
    terms = [{k: v for k, v in r.items() if k != "sequences_per_s"} for r in rows]
    path.with_suffix(".json").write_text(json.dumps({"run": label, "every": 100, "terms": terms}, indent=1))
    steps = [r["step"] for r in terms]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, names in zip(axes, (("kl_flow", "elbo"), ("hj", "recon"))):
        for name in names:
            if name in terms[0]:
                ax.plot(steps, [r[name] for r in terms], label=name)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xlabel="training step", yscale="symlog", title=label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    print(f"wrote {path.with_suffix('.png')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-medium")
    parser.add_argument("--models", nargs="+", default=["ffvae", "vae"])
    parser.add_argument("--at", type=int, nargs="+", default=[500, 1000, 2000, 4000, 6000, 8000])
    parser.add_argument("--sequences", type=int, default=200, help="validation sequences scored for E_k")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the preset's")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="model settings, e.g. density=map (strings)"
    )
    parser.add_argument("--label", default=None, help="the curves' name in the JSON (default: the method)")
    parser.add_argument("--draw-only", action="store_true", help="draw from the JSON and the run directories")
    parser.add_argument("--out", type=Path, default=Path("runs/curves"))
    parser.add_argument("--json", type=Path, default=Path("results/mnist/learning_curves.json"))
    args = parser.parse_args()
    at = sorted(set(args.at))
    blob = json.loads(args.json.read_text()) if args.json.exists() else {"curves": {}}
    fields = dict(item.split("=", 1) for item in args.set)
    for method in [] if args.draw_only else args.models:
        spec = runs.resolve(
            args.preset,
            model=method,
            steps=at[-1],
            checkpoint_every=at[0],
            learning_rate=args.learning_rate,
            **fields,
        )
        blob["setup"] = {"preset": args.preset, "learning_rate": spec.learning_rate, "sequences": args.sequences}
        label = args.label or method
        points = blob["curves"].setdefault(label, {})
        if all(str(s) in points for s in at):
            continue
        run = runs.TrainingRun(spec, args.out / label)
        tic = time.perf_counter()
        for event in run:
            if isinstance(event, runs.StepRecord) and event.step in at and str(event.step) not in points:
                points[str(event.step)] = {
                    **point(spec, run.model, args.sequences),
                    "seconds": time.perf_counter() - tic,
                }
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(blob, indent=2))
                print(label, event.step, json.dumps(points[str(event.step)]), flush=True)
    rows = [
        {"method": m, "step": int(s), "val loss": p["validation_loss"], **p["equivariance_error"]}
        for m, pts in blob["curves"].items()
        for s, p in sorted(pts.items(), key=lambda kv: int(kv[0]))
    ]
    print_table(rows, list(rows[0]))
    draw(blob["curves"], args.json.with_suffix(".png"))
    for label in blob["curves"]:
        if (args.out / label / "metrics.jsonl").exists():
            save_terms(args.out / label, label, args.json.parent / f"training_terms_{label}")


if __name__ == "__main__":
    main()
