"""`compare`: every method trained on the same sequences with the same budget, scored by the same
metric code, summarised as the paper's table (mean ± std over seeds) in compare.json and compare.md."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from .. import methods
from ..runs import RunError, RunSpec, atomic_write
from .records import choose_learning_rate, claim, grid_point, kept_path, lr_name, one_run
from .table import seed_stats, summarise, to_markdown


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
    rates = _LearningRates(grid, spec_for, out, results_dir, log)
    # seed 0 of each method right after its grid (its run is the grid's, still on disk), then the rest
    plan = [(m, 0) for m in names] + [(m, s) for s in range(1, seeds) for m in names if s < seeds_of(m)]
    results, specs = _run_plan(plan, spec_for, rates, out, results_dir, log)
    results = {n: results[n] for n in names}
    setup, header = _setup(specs[names[0]], seeds, ablation_seeds, grid)
    rows = _rows(results, specs, rates)
    summary = {
        "setup": setup,
        "methods": rows,
        "runs": {n: [str(_run_dir(out, n, s, specs[n], grid)) for s in range(seeds_of(n))] for n in results},
    }
    table = to_markdown(rows, results, list(results[plan[0][0]][0]["transformations"]), header)
    for folder in (out, results_dir) if results_dir is not None else (out,):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "compare.json", json.dumps(summary, indent=2))
        atomic_write(folder / "compare.md", table)
    log(table)
    return summary


def _run_dir(out: Path, name: str, seed: int, spec: RunSpec, grid: Sequence[float]) -> Path:
    """Where a run of the comparison lives: `out/<method>/lr<rate>/seed<i>` with a grid, else `out/<method>/seed<i>`."""
    return out / name / lr_name(spec.learning_rate) / f"seed{seed}" if grid else out / name / f"seed{seed}"


@dataclasses.dataclass
class _LearningRates:
    """The learning rate of each method: the preset's without a grid; with one, chosen once per main
    method on seed 0's validation loss at every rate (a variant uses its main method's)."""

    grid: Sequence[float]
    spec_for: Callable[[str, int], RunSpec]
    out: Path
    results_dir: Path | None
    log: Callable[[str], None]
    chosen: dict[str, float] = dataclasses.field(default_factory=dict)
    records: dict[str, list[dict]] = dataclasses.field(default_factory=dict)

    @staticmethod
    def tuned(name: str) -> str:
        return methods.get_method(name).ablation_of or name

    def of(self, name: str) -> float | None:
        if not self.grid:
            return None
        base = self.tuned(name)
        if base not in self.chosen:
            records = []
            for lr in self.grid:
                spec = dataclasses.replace(self.spec_for(base, 0), learning_rate=lr)
                kept = None if self.results_dir is None else self.results_dir / "grid" / base / f"{lr_name(lr)}.json"
                tic = time.perf_counter()
                with contextlib.ExitStack() as held:
                    if kept is not None:
                        held.enter_context(claim(kept, wait=True, log=self.log))
                    record, reused = grid_point(spec, _run_dir(self.out, base, 0, spec, self.grid), kept, self.log)
                jax.clear_caches()
                how = "reused" if reused else f"{time.perf_counter() - tic:.0f} s"
                self.log(f"[grid] {base} lr {lr:g}: validation loss {record['validation_loss']:.2f} ({how})")
                records.append(record)
            self.chosen[base], self.records[base] = choose_learning_rate(records), records
            self.log(f"[grid] {base}: learning rate {self.chosen[base]:g} chosen by validation loss")
        return self.chosen[base]


def _run_plan(
    plan: list[tuple[str, int]],
    spec_for: Callable[[str, int], RunSpec],
    rates: _LearningRates,
    out: Path,
    results_dir: Path | None,
    log: Callable[[str], None],
) -> tuple[dict[str, list[dict]], dict[str, RunSpec]]:
    """Train and evaluate (or reuse) each (method, seed) of the plan in order: eval.json per run, and
    each method's spec. With a record store, each record is claimed first (`records.claim`); one another
    comparison is making is left for last, then waited for and read (so two comparisons started on
    one store share its work instead of repeating it)."""
    done: dict[tuple[str, int], dict] = {}
    specs: dict[str, RunSpec] = {}
    later: list[tuple[int, str, int]] = []

    def run(i: int, name: str, seed: int, wait: bool) -> bool:
        spec = spec_for(name, seed)
        lr = rates.of(name)
        if lr is not None:
            spec = dataclasses.replace(spec, learning_rate=lr)
        specs[name] = spec
        kept = None if results_dir is None else kept_path(results_dir, name, seed)
        tic = time.perf_counter()
        with contextlib.ExitStack() as held:
            if kept is not None and not held.enter_context(claim(kept, wait=wait, log=log)):
                log(f"[{i + 1}/{len(plan)}] {name} seed {seed}: another comparison is making it; coming back to it")
                return False
            result, reused = one_run(spec, _run_dir(out, name, seed, spec, rates.grid), kept, log)
        jax.clear_caches()
        done[name, seed] = result
        errs = ", ".join(f"{t} {e['equivariance_error']:.1f}" for t, e in result["transformations"].items())
        how = "reused" if reused else f"{time.perf_counter() - tic:.0f} s"
        log(f"[{i + 1}/{len(plan)}] {name} seed {seed}: E {errs}; log p(x) {result['log_likelihood']:.1f} ({how})")
        return True

    for i, (name, seed) in enumerate(plan):
        if not run(i, name, seed, wait=False):
            later.append((i, name, seed))
    for i, name, seed in later:
        run(i, name, seed, wait=True)
    results: dict[str, list[dict]] = {}
    for name, seed in plan:
        results.setdefault(name, []).append(done[name, seed])
    return results, specs


def _rows(results: dict[str, list[dict]], specs: dict[str, RunSpec], rates: _LearningRates) -> dict:
    """`summarise`'s rows with each method's training time, learning rate (and grid), ablation and settings."""
    rows = summarise(results)
    for name in results:
        secs = [r["training_seconds"] for r in results[name] if "training_seconds" in r]
        if secs:
            rows[name]["columns"]["training_seconds_per_run"] = seed_stats(secs)
        rows[name]["learning_rate"] = specs[name].learning_rate
        rows[name]["ablation_of"] = methods.get_method(name).ablation_of
        rows[name]["settings"] = specs[name].to_json()["model"]
        if rates.grid:
            rows[name]["learning_rate_grid"] = {
                lr_name(r["learning_rate"]): r["validation_loss"] for r in rates.records[rates.tuned(name)]
            }
    return rows


def _setup(spec: RunSpec, seeds: int, ablation_seeds: int | None, grid: Sequence[float]) -> tuple[dict, str]:
    """compare.json's `setup` (the protocol every row shares) and the table's header line."""
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
        "ll_sequences": spec.eval.ll_sequences or spec.eval.eval_sequences,
        "drift_samples": spec.eval.drift_samples,
        "drift_sequences": spec.eval.drift_sequences if spec.eval.drift_samples else 0,
        "validation_fraction": spec.validation_fraction,
        "learning_rate_grid": list(grid),
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
        f"learning rate chosen per method from {list(grid)} on validation loss"
        if grid
        else f"lr {spec.learning_rate:g}"
    )
    header = (
        f"Comparison on {spec.dataset} (preset {spec.preset}): {spec.steps} steps × batch {spec.batch_size}, "
        f"d = {setup['latent_dim']}, width {setup['width']}, {lr_text}, {seeds} seed(s), "
        f"{setup['eval_sequences']} held-out sequences; log p(x) with {setup['ll_samples']} importance samples on "
        f"the first {setup['ll_sequences']}"
        + (
            f", the estimator's drift against {setup['drift_samples']} samples on {setup['drift_sequences']}."
            if setup["drift_samples"]
            else "."
        )
    )
    return setup, header
