"""Evaluating a run and drawing it: eval.json, the printed table, the figures and TensorBoard."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..interfaces import AbstractSequenceModel, AbstractSparseControlModel
from ..runs import RunSpec, atomic_write, evaluate_with_batches, locked
from ..tensorboard import log_evaluation
from .figures import draw_decomposition, draw_figures, matched_flows


def evaluate_and_draw(
    spec: RunSpec,
    model: AbstractSequenceModel,
    run_dir: str | os.PathLike,
    step: int,
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Score a run and draw it: eval.json (atomically, under the run's lock), its table (to `log`), the
    figures, and all of them in TensorBoard at `step`. What `train` and `eval` do after training."""
    with locked(Path(run_dir)):
        tic = time.perf_counter()
        result, test, shifts = evaluate_with_batches(spec, model)
        atomic_write(Path(run_dir) / "eval.json", json.dumps(result, indent=2))
        log(format_table(result))
        evaluated = time.perf_counter()
        draw_figures(spec, model, test, Path(run_dir) / "figures", shifts, matched_flows(result, len(spec.transforms)))
        if isinstance(model, AbstractSparseControlModel) and "sparse_controls" in result:
            draw_decomposition(spec, model, Path(run_dir) / "figures", result["sparse_controls"]["matching"])
        log(f"evaluated in {evaluated - tic:.0f} s, figures in {time.perf_counter() - evaluated:.0f} s")
        log_evaluation(run_dir, step, result, Path(run_dir) / "figures")
    return result


def format_table(result: dict) -> str:
    """eval.json as a text table: one row per transformation, then composition and the flows' maps."""
    head = (
        f"{'transformation':<16} {'E_k model':>10} {'E_k linear':>11} {'E_k identity':>13} {'model/id':>8} "
        f"{'changed/id':>10} {'E_k extrap.':>12} {'log p(x)':>10} {'ESS':>6} {'n':>5}"
    )
    lines = [head, "-" * len(head)]
    for name, e in result["transformations"].items():
        if not e["num_sequences"]:
            lines.append(f"{name:<16} {'(no sequences)':>10}")
            continue
        ratio = e["equivariance_error"] / e["equivariance_error_identity"]
        changed = e.get("equivariance_error_changed")
        changed_ratio = "—" if changed is None else f"{changed / e['equivariance_error_identity_changed']:.3f}"
        extra = e.get("equivariance_error_extrapolation")
        ll = "—" if "log_likelihood" not in e else f"{e['log_likelihood']:.2f}"
        ess = "—" if "effective_sample_size" not in e else f"{e['effective_sample_size']:.1f}"
        lines.append(
            f"{name:<16} {e['equivariance_error']:>10.2f} {e['equivariance_error_linear']:>11.2f} "
            f"{e['equivariance_error_identity']:>13.2f} {ratio:>8.3f} {changed_ratio:>10} "
            f"{'—' if extra is None else f'{extra:.2f}':>12} {ll:>10} {ess:>6} {e['num_sequences']:>5}"
        )
    if "changed_pixel_threshold" in result:
        lines.append(
            "changed/id: E_k over the pixels that change between x_0 and x_t (some channel by more than "
            f"{result['changed_pixel_threshold']:g}) over the identity's on them"
        )
    if result.get("transformation") == "linear shift":
        lines.append(
            "E_k model: this model learns no transformation, so it is the best linear shift (docs/method.md §5)"
        )
    n_ll = result.get("num_likelihood_sequences", result["num_sequences"])
    lines.append(
        f"log-likelihood (mean over frames and the first {n_ll} sequences): {result['log_likelihood']:.2f} "
        f"nats/image, S = {result['num_importance_samples']} "
        f"({'own proposal' if result['likelihood_proposal'].startswith('the model') else 'mixture proposal'}), mean ESS "
        f"{result['effective_sample_size']:.1f}"
    )
    if "likelihood_drift" in result:
        d = result["likelihood_drift"]
        lines.append(
            f"estimator drift: at S = {d['samples']} on the first {d['sequences']} sequences "
            f"{d['log_likelihood']:.2f} (S = {result['num_importance_samples']}: "
            f"{d['log_likelihood_at_num_samples']:.2f}); mean |Δ| {d['mean_abs_difference']:.2f} nats, "
            f"max {d['max_abs_difference']:.2f}, ESS {d['effective_sample_size']:.1f}"
        )
    for pair, e in result.get("equivariance_error_composition", {}).items():
        lines.append(
            f"composition {pair:<16} E model {e['equivariance_error']:.2f}, linear {e['equivariance_error_linear']:.2f}, "
            f"identity {e['equivariance_error_identity']:.2f}"
        )
    for name, f in result.get("flows", {}).items():
        if f["num_sequences"]:
            lines.append(
                f"flow {name:<12} min eigenvalue of I + h∇²u {f['min_eigenvalue']:.4f}; "
                f"trace-form gap at T {f['logdet_gap']:.4f} nats"
            )
    if "grouped_by" in result:
        usage = " / ".join(f"{u:.2f}" for u in result["flow_usage"].values())
        lines.append(f"rows are grouped by {result['grouped_by']}; flow usage {usage}")
        lines.append(f"not measured: {result['not_measured']}")
    if "flow_assignment" in result:
        fa, names = result["flow_assignment"], list(result["transformations"])
        matched = ", ".join(f"{name} → flow {j}" for name, j in zip(names, fa["matching"]))
        usage = " / ".join(f"{u:.2f}" for u in fa["usage"])
        lines.append(f"k inferred by q(k|x̄): matched accuracy {fa['accuracy']:.3f} ({matched}); flow usage {usage}")
    if "sparse_controls" in result:
        sc = result["sparse_controls"]
        sp, ce = sc["spikes"], sc["composition_error"]
        lines.append(
            f"on {sc['num_sequences']} composed sequences ({sc['active_per_step']:.0f} on per step, "
            f"{sp['predicted_active_per_step']:.2f} inferred): spike precision {sp['precision']:.3f}, recall "
            f"{sp['recall']:.3f}, F1 {sp['f1']:.3f}; E along the inferred controls {ce['equivariance_error']:.2f}, "
            f"identity {ce['equivariance_error_identity']:.2f}, true active sets {ce['equivariance_error_true_active']:.2f}"
        )
    return "\n".join(lines)
