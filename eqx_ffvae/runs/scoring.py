"""Scoring a run: its evaluation on held-out sequences (eval.json) and its validation loss."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .. import data
from ..evaluation import (
    evaluate,
    fit_grouped_linear_shifts,
    fit_linear_shifts,
    group_by_inferred_flow,
    unlabelled_result,
)
from ..interfaces import AbstractSequenceModel, AbstractSparseControlModel
from ..sparse_evaluation import evaluate_sparse_controls
from .directory import atomic_write
from .inputs import eval_batches, sequences
from .spec import EVAL_SEED, RunError, RunSpec


def evaluate_run(spec: RunSpec, model: AbstractSequenceModel, run_dir: str | os.PathLike | None = None) -> dict:
    """Score `model` on the run's held-out sequences (docs/method.md §5); with `run_dir`, write its eval.json
    (atomically). Returns the result with `test_batches` and `shifts` left out."""
    result, _, _ = evaluate_with_batches(spec, model)
    if run_dir is not None:
        atomic_write(Path(run_dir) / "eval.json", json.dumps(result, indent=2))
    return result


def evaluate_with_batches(spec: RunSpec, model: AbstractSequenceModel) -> tuple[dict, list[dict], jax.Array]:
    """(result, the held-out batches scored, the fitted linear shifts): what figures need as well.
    Unlabelled sequences are grouped by the flow the model infers for each (`evaluation.unlabelled_result`).
    A sparse-control model trained on composed sequences (`mnist-single`, `mnist-double`) is scored on the
    test sequences of the single-transformation dataset they are composed from (`DatasetInfo.composed_from`),
    as every other method, and gains `sparse_controls`
    (`sparse_evaluation.evaluate_sparse_controls`) on its own data's composed test sequences."""
    single = data.dataset_info(spec.dataset).composed_from
    if single is not None and isinstance(model, AbstractSparseControlModel):
        result, test, shifts = evaluate_with_batches(dataclasses.replace(spec, dataset=single), model)
        ev = spec.eval
        batches = eval_batches(spec, "test", -(-ev.eval_sequences // ev.eval_batch_size))
        matching = result["flow_assignment"]["matching"]
        result["sparse_controls"] = evaluate_sparse_controls(model, batches, matching, spec.transforms)
        result["dataset"] = spec.dataset
        result["scored_on"] = (
            f"E_k, flow_assignment and log p(x): the single-transformation {single} test sequences; sparse_controls: "
            f"the {spec.dataset} test sequences (the same held-out digits)"
        )
        return result, test, shifts
    ev = spec.eval
    test = eval_batches(spec, "test", -(-ev.eval_sequences // ev.eval_batch_size))
    train = eval_batches(spec, "train", ev.shift_batches)
    names, pooled = spec.transforms, []
    labelled = data.dataset_info(spec.dataset).labelled
    if labelled:
        shifts = fit_linear_shifts(model, train, len(names))
    else:  # only flow-inferring models train on such data (`resolve` checks)
        test, train = group_by_inferred_flow(model, test), group_by_inferred_flow(model, train)
        names = tuple(f"flow {j}" for j in range(len(names)))
        shifts, pooled = fit_grouped_linear_shifts(model, train, len(names))
    result = evaluate(
        model,
        test,
        shifts,
        transform_names=names,
        key=jr.key(EVAL_SEED),
        num_samples=ev.ll_samples,
        likelihood_sequences=ev.ll_sequences,
        drift_samples=ev.drift_samples,
        drift_sequences=ev.drift_sequences,
    )
    if not labelled:
        result = unlabelled_result(result, pooled)
    result["dataset"] = spec.dataset
    result["model"] = spec.method
    return result, test, shifts


@eqx.filter_jit
def _validation_batch_loss(model, frames, ks, key, step):
    return model.batch_loss(frames, ks, key=key, step=step)


def validation_loss(spec: RunSpec, model: AbstractSequenceModel) -> dict:
    """The model's own training objective (`batch_loss`, at the run's final step for a scheduled one)
    on the first `spec.eval.eval_sequences` sequences of the validation split in the evaluation order
    (fixed seed; all of them when the split is smaller, as MNIST's 500), in batches of the evaluation
    batch size with fixed keys: {"validation_loss", "terms", "num_sequences"}. What `compare --lr-grid`
    ranks learning rates by; never a test metric. Needs a run with `validation_fraction` > 0. (A factor
    dataset's validation split is every tenth factor combination, 48,000 sequences for Shapes3D: the
    cap keeps it the size of the test set.)"""
    if not spec.validation_fraction:
        raise RunError(
            "this run has no validation split (validation_fraction 0); train it with --validation-fraction > 0"
        )
    ds = sequences(spec, split="validation", seed=EVAL_SEED, num_epochs=1)
    limit, size = spec.eval.eval_sequences, spec.eval.eval_batch_size
    batches = itertools.islice(data.batch_iterator(ds, size, drop_remainder=False), -(-limit // size))
    losses, terms, sizes = [], [], []
    for i, batch in enumerate(batches):
        take = min(len(batch["k"]), limit - sum(sizes))
        loss, batch_terms = _validation_batch_loss(
            model,
            jnp.asarray(batch["frames"][:take]),
            jnp.asarray(batch["k"][:take]),
            jr.fold_in(jr.key(EVAL_SEED), i),
            spec.steps,
        )
        losses.append(float(loss))
        terms.append({name: float(v) for name, v in batch_terms.items()})
        sizes.append(take)
    if not sizes:
        raise RunError(f"the validation split of {spec.dataset} is empty; raise --validation-fraction")
    w = np.asarray(sizes, np.float64) / sum(sizes)
    return {
        "validation_loss": float(np.dot(w, losses)),
        "terms": {name: float(np.dot(w, [t[name] for t in terms])) for name in terms[0]},
        "num_sequences": int(sum(sizes)),
    }


def local_copy(model: eqx.Module) -> eqx.Module:
    """This process's copy of a replicated model (multi-host arrays are not all addressable)."""
    if jax.process_count() == 1:
        return model
    return jax.tree.map(lambda x: x.addressable_data(0) if eqx.is_array(x) else x, model)
