"""`compare`: every method trained on the same sequences with the same budget, scored by the same
metric code, summarised as the paper's table (mean ± std over seeds) in compare.json and compare.md."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import methods
from .runs import RunError, RunSpec, atomic_write, evaluate_run, read_spec, restore_model, train


def _finished(run_dir: Path, spec: RunSpec) -> dict | None:
    """The run's eval.json if it was written after training this configuration to the end."""
    path = run_dir / "eval.json"
    if not path.exists() or not (run_dir / "config.json").exists():
        return None
    try:
        result = json.loads(path.read_text())
        saved = read_spec(run_dir)
    except (ValueError, RunError):
        return None
    same = saved.identity() == spec.identity() and (saved.steps, saved.eval) == (spec.steps, spec.eval)
    return result if same and result.get("trained_steps") == spec.steps else None


def _one_run(spec: RunSpec, run_dir: Path) -> tuple[dict, bool]:
    result = _finished(run_dir, spec)
    if result is not None:
        return result, True
    tic = time.perf_counter()
    train(spec, run_dir)
    model, last = restore_model(spec, run_dir)
    if last != spec.steps:
        raise RunError(f"{run_dir} stopped at step {last} of {spec.steps}; rerun compare to resume it")
    result = evaluate_run(spec, model)
    result["trained_steps"] = spec.steps
    result["seconds"] = time.perf_counter() - tic  # this invocation's training (or resumed part) + eval
    atomic_write(run_dir / "eval.json", json.dumps(result, indent=2))
    return result, False


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}


def summarise(results: dict[str, list[dict]], transforms: list[str]) -> dict:
    """Per method: supervision, E_k per transformation and log-likelihood as mean/std/values over seeds."""
    rows = {}
    for name, runs in results.items():
        method = methods.get_method(name)
        rows[name] = {
            "label": method.label,
            "supervision": method.supervision,
            "transformation": runs[0]["transformation"],
            "equivariance_error": {
                t: _stats([r["transformations"][t]["equivariance_error"] for r in runs]) for t in transforms
            },
            "log_likelihood": _stats([r["log_likelihood"] for r in runs]),
            "seeds": len(runs),
        }
        if all("flow_assignment" in r for r in runs):
            rows[name]["flow_assignment_accuracy"] = _stats([r["flow_assignment"]["accuracy"] for r in runs])
    return rows


def _best(rows: dict, get: Callable[[dict], float], lowest: bool) -> str:
    pick = min if lowest else max
    return pick(rows, key=lambda name: get(rows[name]))


def to_markdown(rows: dict, transforms: list[str], header: str) -> str:
    """The paper's layout: methods × (supervision, E_k ↓ per transformation, log p(x) ↑), best in bold."""
    cols = [(f"E {t} ↓", lambda r, t=t: r["equivariance_error"][t], True) for t in transforms]
    cols.append(("log p(x) ↑", lambda r: r["log_likelihood"], False))
    best = [_best(rows, lambda r, g=g: g(r)["mean"], low) for _, g, low in cols]
    lines = [
        header,
        "",
        "| Method | Supervision | " + " | ".join(c[0] for c in cols) + " |",
    ]
    lines.append("|---|---|" + "---:|" * len(cols))
    for name, r in rows.items():
        cells = []
        for (_, get, _), winner in zip(cols, best):
            s = get(r)
            text = f"{s['mean']:.1f} ± {s['std']:.1f}"
            cells.append(f"**{text}**" if name == winner else text)
        label = r["label"] + (" †" if r["transformation"] == "linear shift" else "")
        lines.append(f"| {label} | {r['supervision']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "E: equivariance error Σ_t ‖dec(z_t) − x_t‖₁ per held-out sequence (SPEC §5), lower is better; "
            "log p(x): importance-sampled nats per image, higher is better; mean ± std over seeds, best in bold."
        ),
        "† no learned transformation: z_t = μ(x_0) + Δ_{k,t}, the best linear shift fitted on training sequences.",
    ]
    inferred = [(r["label"], r["flow_assignment_accuracy"]) for r in rows.values() if "flow_assignment_accuracy" in r]
    if inferred:
        accuracies = "; ".join(f"{label} {s['mean']:.3f} ± {s['std']:.3f}" for label, s in inferred)
        lines.append(
            "Models that do not observe k use the flow their q(k | sequence) infers, and their likelihood "
            f"marginalises k (SPEC §5). Matched accuracy of the inferred flow: {accuracies}."
        )
    return "\n".join(lines) + "\n"


def run_compare(
    models: list[str],
    seeds: int,
    out: Path,
    spec_for: Callable[[str, int], RunSpec],
    *,
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """Train/evaluate (or reuse) every (method, seed) run under `out`, then write compare.json and
    compare.md; `spec_for(method, seed)` resolves one run's configuration as `train` would. `log`
    receives one line per finished run and the table."""
    if seeds < 1:
        raise RunError(f"--seeds must be ≥ 1, got {seeds}")
    if not models:
        raise RunError("--models is empty; name at least one method")
    names = list(dict.fromkeys(models))
    plan = [(m, s) for s in range(seeds) for m in names]  # seed-major: a full first table early
    results: dict[str, list[dict]] = {}
    spec = None
    for i, (name, seed) in enumerate(plan):
        spec = spec_for(name, seed)
        run_dir = out / name / f"seed{seed}"
        tic = time.perf_counter()
        result, reused = _one_run(spec, run_dir)
        secs = time.perf_counter() - tic
        results.setdefault(name, []).append(result)
        errs = ", ".join(f"{t} {e['equivariance_error']:.1f}" for t, e in result["transformations"].items())
        how = "reused" if reused else f"{secs:.0f} s"
        log(f"[{i + 1}/{len(plan)}] {name} seed {seed}: E {errs}; log p(x) {result['log_likelihood']:.1f} ({how})")
    transforms = list(results[plan[0][0]][0]["transformations"])
    rows = summarise({n: results[n] for n in names}, transforms)
    for name in names:
        secs = [r["seconds"] for r in results[name] if "seconds" in r]
        if secs:
            rows[name]["seconds_per_run"] = _stats(secs)
    setup = {
        "preset": spec.preset,
        "dataset": spec.dataset,
        "steps": spec.steps,
        "batch_size": spec.batch_size,
        "learning_rate": spec.learning_rate,
        "latent_dim": spec.model.latent_dim,
        "width": spec.model.width,
        "seeds": seeds,
        "eval_sequences": spec.eval.eval_sequences,
        "ll_samples": spec.eval.ll_samples,
    }
    header = (
        f"Comparison on {spec.dataset} (preset {spec.preset}): {spec.steps} steps × batch {spec.batch_size}, "
        f"d = {setup['latent_dim']}, width {setup['width']}, {seeds} seed(s), "
        f"{setup['eval_sequences']} held-out sequences, {setup['ll_samples']} importance samples."
    )
    summary = {
        "setup": setup,
        "methods": rows,
        "runs": {n: [str(out / n / f"seed{s}") for s in range(seeds)] for n in results},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "compare.json", json.dumps(summary, indent=2))
    table = to_markdown(rows, transforms, header)
    atomic_write(out / "compare.md", table)
    log(table)
    return summary
