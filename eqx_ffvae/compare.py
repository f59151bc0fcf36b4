"""`compare`: every method trained on the same sequences with the same budget, scored by the same
metric code, summarised as the paper's table (mean ± std over seeds) in compare.json and compare.md."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from . import methods
from .runs import (
    NonFiniteLoss,
    RunError,
    RunSpec,
    atomic_write,
    evaluate_run,
    read_metrics,
    read_spec,
    restore_model,
    train,
    validation_loss,
)


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


def training_seconds(records: list[dict], batch_size: int) -> float:
    """The training loop's wall time over every invocation that wrote `records` (metrics.jsonl):
    each step's `sequences_per_s` is `batch_size` over the wall time since the previous step was read,
    so the sum of `batch_size / sequences_per_s` covers stepping, data and checkpoints, and leaves out
    each invocation's compilation and the evaluation. A run resumed across sessions counts all its parts."""
    return float(sum(batch_size / r["sequences_per_s"] for r in records if r.get("sequences_per_s")))


def _metrics_summary(run_dir: Path, batch_size: int, last: int = 100) -> dict:
    """The training record of a run in brief: the final step's terms, each term's mean over the last
    `last` steps and the training loop's wall time (`training_seconds`), from metrics.jsonl."""
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        return {}
    tail = records[-last:]
    names = [k for k in tail[-1] if k != "step"]
    return {
        "final_step": tail[-1]["step"],
        "training_seconds": training_seconds(records, batch_size),
        "final": {k: tail[-1][k] for k in names},
        f"mean_of_last_{len(tail)}": {k: float(np.mean([r[k] for r in tail if k in r])) for k in names},
    }


def _kept(results_dir: Path, name: str, seed: int) -> Path:
    return results_dir / "runs" / name / f"seed{seed}"


def _keep(run_dir: Path, kept: Path, result: dict, batch_size: int) -> None:
    """A finished run's small record under `kept`: eval.json, config.json, metrics_summary.json (no
    checkpoints), each written atomically; eval.json last, so its presence means the record is whole."""
    kept.mkdir(parents=True, exist_ok=True)
    atomic_write(kept / "config.json", (run_dir / "config.json").read_text())
    atomic_write(kept / "metrics_summary.json", json.dumps(_metrics_summary(run_dir, batch_size), indent=2))
    atomic_write(kept / "eval.json", json.dumps(result, indent=2))


def _one_run(spec: RunSpec, run_dir: Path, kept: Path | None = None) -> tuple[dict, bool]:
    for directory in (kept, run_dir):
        result = None if directory is None else _finished(directory, spec)
        if result is not None:
            if kept is not None and directory == run_dir:
                _keep(run_dir, kept, result, spec.batch_size)
            return result, True
    tic = time.perf_counter()
    train(spec, run_dir)
    model, last = restore_model(spec, run_dir)
    if last != spec.steps:
        raise RunError(f"{run_dir} stopped at step {last} of {spec.steps}; rerun compare to resume it")
    result = evaluate_run(spec, model)
    result["trained_steps"] = spec.steps
    result["seconds"] = time.perf_counter() - tic  # this invocation's training (or resumed part) + eval
    result["training_seconds"] = training_seconds(read_metrics(run_dir / "metrics.jsonl"), spec.batch_size)
    atomic_write(run_dir / "eval.json", json.dumps(result, indent=2))
    if kept is not None:
        _keep(run_dir, kept, result, spec.batch_size)
    return result, False


def _lr_name(learning_rate: float) -> str:
    return f"lr{learning_rate:g}"


def same_identity(stored: dict | None, spec: RunSpec) -> bool:
    """Whether a stored identity (a grid record's) is `spec`'s, with the model fields it predates at
    their defaults: a config field added later with a default that keeps the old behaviour does not
    make a committed record stale."""
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        return False
    try:
        model = methods.make_config(stored["method"], **stored["model"])
    except (KeyError, TypeError, ValueError):
        return False
    return {**stored, "model": json.loads(json.dumps(dataclasses.asdict(model)))} == spec.identity()


def _grid_point(spec: RunSpec, run_dir: Path, kept: Path | None) -> tuple[dict, bool]:
    """Train `spec` (seed 0 at one learning rate of the grid) and score it by its own validation loss
    (`runs.validation_loss`); a run that stops on a non-finite loss scores +inf ("failed" says why).
    The record (with the run's config and metrics summary) is reused from `kept` or `run_dir` when it
    was made for the same configuration."""
    for path in (kept, run_dir / "validation.json"):
        if path is not None and path.exists():
            try:
                record = json.loads(path.read_text())
            except ValueError:
                continue
            if same_identity(record.get("identity"), spec) and record.get("steps") == spec.steps:
                if kept is not None and path != kept:
                    atomic_write(kept, json.dumps(record, indent=2))
                return record, True
    record: dict = {"learning_rate": spec.learning_rate, "steps": spec.steps, "identity": spec.identity()}
    tic = time.perf_counter()
    try:
        train(spec, run_dir)
        model, last = restore_model(spec, run_dir)
        if last != spec.steps:
            raise RunError(f"{run_dir} stopped at step {last} of {spec.steps}; rerun compare to resume it")
        record.update(validation_loss(spec, model))
    except NonFiniteLoss as err:
        record.update(validation_loss=math.inf, failed=str(err))
    record["seconds"] = time.perf_counter() - tic
    record["metrics_summary"] = _metrics_summary(run_dir, spec.batch_size)
    record["validation_loss"] = float(record["validation_loss"])
    for path in (run_dir / "validation.json", kept):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(record, indent=2))
    return record, False


def choose_learning_rate(records: Sequence[dict]) -> float:
    """The grid's learning rate of lowest validation loss (ties: the smaller rate); an error if every
    point failed."""
    finite = [r for r in records if math.isfinite(r["validation_loss"])]
    if not finite:
        reasons = "; ".join(f"{r['learning_rate']:g}: {r.get('failed', 'no finite loss')}" for r in records)
        raise RunError(f"every learning rate of the grid failed ({reasons}); try smaller rates with --lr-grid")
    return min(finite, key=lambda r: (r["validation_loss"], r["learning_rate"]))["learning_rate"]


def _stats(values: list[float]) -> dict:
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
            stats = _stats([c[col][0] for c in columns[name]])
            if ref and all(col in c and c[col][1] is not None for c in columns[name] + ref):
                stats["difference_to_ffvae"] = paired_bootstrap(
                    [c[col][1] for c in columns[name]], [c[col][1] for c in ref]
                )
            row["columns"][col] = stats
        if all("flow_assignment" in r for r in runs):
            row["columns"]["flow_assignment_accuracy"] = _stats([r["flow_assignment"]["accuracy"] for r in runs])
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


def run_compare(
    models: list[str],
    seeds: int,
    out: Path,
    spec_for: Callable[[str, int], RunSpec],
    *,
    log: Callable[[str], None] = lambda line: None,
    results_dir: Path | None = None,
    learning_rates: Sequence[float] = (),
    ablation_seeds: int | None = None,
) -> dict:
    """Train/evaluate (or reuse) every (method, seed) run under `out`, then write compare.json and
    compare.md; `spec_for(method, seed)` resolves one run's configuration as `train` would. `log`
    receives one line per finished run and the table.

    With `learning_rates` (a grid; the runs need a validation split), each main method's learning
    rate is chosen first: seed 0 is trained at every rate of the grid, scored by its own validation
    loss (`choose_learning_rate`; never a test metric), and the table's runs use the chosen rate (seed
    0's is the grid run itself, evaluated). A variant (`Method.ablation_of`) uses the rate chosen for
    the method it ablates, and is run over `ablation_seeds` seeds (default: `seeds`). Runs go to `out/<method>/lr<rate>/seed<i>`, without a grid to
    `out/<method>/seed<i>`.

    With `results_dir` (a folder meant to be committed, e.g. `results/mnist`), each finished run's
    small record (eval.json, config.json, metrics_summary.json; never checkpoints) is kept in
    `results_dir/runs/<method>/seed<i>/` as soon as it lands, and each grid point's validation record
    in `results_dir/grid/<method>/lr<rate>.json`; a run whose record is there (for the same
    configuration) is not trained again even if `out` is gone, and compare.json and compare.md are
    written to `results_dir` too: a table can be built in chunks, across sessions and machines.
    Compiled programs are dropped after every run, so memory does not grow with the number of methods."""
    if seeds < 1:
        raise RunError(f"--seeds must be ≥ 1, got {seeds}")
    if not models:
        raise RunError("--models is empty; name at least one method")
    if ablation_seeds is not None and not 1 <= ablation_seeds <= seeds:
        raise RunError(f"--ablation-seeds must be in [1, --seeds = {seeds}], got {ablation_seeds}")
    names = list(dict.fromkeys(models))

    def seeds_of(name: str) -> int:
        return seeds if ablation_seeds is None or not methods.get_method(name).ablation_of else ablation_seeds

    grid = sorted(set(float(lr) for lr in learning_rates))
    if grid and not spec_for(names[0], 0).validation_fraction:
        raise RunError(
            "--lr-grid chooses learning rates on validation sequences: pass --validation-fraction > 0 "
            "(or a preset that has one, e.g. mnist-medium)"
        )

    def tuned(name: str) -> str:
        return methods.get_method(name).ablation_of or name

    chosen: dict[str, float] = {}
    grids: dict[str, list[dict]] = {}

    def run_dir(name: str, seed: int, spec: RunSpec) -> Path:
        return out / name / _lr_name(spec.learning_rate) / f"seed{seed}" if grid else out / name / f"seed{seed}"

    def learning_rate(name: str) -> float | None:
        if not grid:
            return None
        base = tuned(name)
        if base not in chosen:
            records = []
            for lr in grid:
                spec = dataclasses.replace(spec_for(base, 0), learning_rate=lr)
                kept = None if results_dir is None else results_dir / "grid" / base / f"{_lr_name(lr)}.json"
                tic = time.perf_counter()
                record, reused = _grid_point(spec, run_dir(base, 0, spec), kept)
                jax.clear_caches()
                how = "reused" if reused else f"{time.perf_counter() - tic:.0f} s"
                log(f"[grid] {base} lr {lr:g}: validation loss {record['validation_loss']:.2f} ({how})")
                records.append(record)
            chosen[base], grids[base] = choose_learning_rate(records), records
            log(f"[grid] {base}: learning rate {chosen[base]:g} chosen by validation loss")
        return chosen[base]

    # seed 0 of each method right after its grid (its run is the grid's, still on disk), then the rest
    plan = [(m, 0) for m in names] + [(m, s) for s in range(1, seeds) for m in names if s < seeds_of(m)]
    results: dict[str, list[dict]] = {}
    specs: dict[str, RunSpec] = {}
    for i, (name, seed) in enumerate(plan):
        spec = spec_for(name, seed)
        lr = learning_rate(name)
        if lr is not None:
            spec = dataclasses.replace(spec, learning_rate=lr)
        specs[name] = spec
        tic = time.perf_counter()
        kept = None if results_dir is None else _kept(results_dir, name, seed)
        result, reused = _one_run(spec, run_dir(name, seed, spec), kept)
        jax.clear_caches()
        secs = time.perf_counter() - tic
        results.setdefault(name, []).append(result)
        errs = ", ".join(f"{t} {e['equivariance_error']:.1f}" for t, e in result["transformations"].items())
        how = "reused" if reused else f"{secs:.0f} s"
        log(f"[{i + 1}/{len(plan)}] {name} seed {seed}: E {errs}; log p(x) {result['log_likelihood']:.1f} ({how})")
    transforms = list(results[plan[0][0]][0]["transformations"])
    results = {n: results[n] for n in names}
    rows = summarise(results)
    for name in names:
        secs = [r["training_seconds"] for r in results[name] if "training_seconds" in r]
        if secs:
            rows[name]["columns"]["training_seconds_per_run"] = _stats(secs)
        method = methods.get_method(name)
        rows[name]["learning_rate"] = specs[name].learning_rate
        rows[name]["ablation_of"] = method.ablation_of
        rows[name]["settings"] = specs[name].to_json()["model"]
        if grid:
            rows[name]["learning_rate_grid"] = {
                _lr_name(r["learning_rate"]): r["validation_loss"] for r in grids[tuned(name)]
            }
    spec = specs[names[0]]
    setup = {
        "preset": spec.preset,
        "dataset": spec.dataset,
        "steps": spec.steps,
        "batch_size": spec.batch_size,
        "latent_dim": spec.model.latent_dim,
        "width": spec.model.width,
        "seeds": seeds,
        "ablation_seeds": seeds if ablation_seeds is None else ablation_seeds,
        "eval_sequences": spec.eval.eval_sequences,
        "ll_samples": spec.eval.ll_samples,
        "validation_fraction": spec.validation_fraction,
        "learning_rate_grid": grid,
        "learning_rate_selection": (
            "per main method: seed 0 at every rate of the grid, the lowest own loss on the validation sequences; "
            "ablations use the rate of the method they ablate"
            if grid
            else "the preset's (or --learning-rate's) for every method"
        ),
    }
    if not grid:
        setup["learning_rate"] = spec.learning_rate
    lr_text = (
        f"learning rate chosen per method from {grid} on validation loss" if grid else f"lr {spec.learning_rate:g}"
    )
    header = (
        f"Comparison on {spec.dataset} (preset {spec.preset}): {spec.steps} steps × batch {spec.batch_size}, "
        f"d = {setup['latent_dim']}, width {setup['width']}, {lr_text}, {seeds} seed(s), "
        f"{setup['eval_sequences']} held-out sequences, {setup['ll_samples']} importance samples."
    )
    summary = {
        "setup": setup,
        "methods": rows,
        "runs": {n: [str(run_dir(n, s, specs[n])) for s in range(seeds_of(n))] for n in results},
    }
    table = to_markdown(rows, results, transforms, header)
    for folder in (out, results_dir) if results_dir is not None else (out,):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "compare.json", json.dumps(summary, indent=2))
        atomic_write(folder / "compare.md", table)
    log(table)
    return summary
