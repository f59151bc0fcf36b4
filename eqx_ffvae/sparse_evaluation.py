"""Held-out evaluation of a sparse-control model (STA) on sequences whose transformations compose
(docs/method.md §8): does it switch the right flows on at the right steps, and does following the
controls it reads off a sequence reproduce the sequence?"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Shaped

from . import metrics
from .interfaces import AbstractSparseControlModel


@eqx.filter_jit
def _batch_scores(
    model: AbstractSparseControlModel, frames: Float[Array, "b n c h w"], active: Shaped[Array, "b t k"], matching
) -> dict:
    """Per sequence: spike probabilities (T, K) and E along the inferred controls, with no motion, and
    along the true active sets (each transformation's matched flow on at control 1)."""
    num_flows = model.num_flows
    true_controls = jnp.einsum("btk,kj->btj", active.astype(frames.dtype), jax.nn.one_hot(matching, num_flows))

    def one(args):
        x, truth = args
        mu, _ = model.encode(x[0])
        return {
            "spikes": model.spike_probabilities(x),
            "inferred": metrics.equivariance_error_controlled(model, x),
            "identity": metrics.equivariance_error_identity(model, x),
            "true_active": metrics.l1_error(model, model.controlled_path(mu, truth)[1:], x[1:]),
        }

    return jax.lax.map(one, (frames, true_controls))


def spike_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall and F1 of predicted active steps (booleans, any shape) against the true ones."""
    tp = int(np.sum(predicted & truth))
    fp, fn = int(np.sum(predicted & ~truth)), int(np.sum(~predicted & truth))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "true_positives": tp, "false_positives": fp}


def evaluate_sparse_controls(
    model: AbstractSparseControlModel,
    batches: Sequence[dict],
    matching: Sequence[int],
    transform_names: Sequence[str],
) -> dict:
    """Spike precision/recall/F1 (flow `matching[k]` counted as transformation k, on where its spike
    probability is above ½), overall and per transformation, and the composition error: E over frames
    1…T following the inferred controls (`equivariance_error_controlled`), against no motion and against
    the true active sets at control 1. `batches` carry "frames" and "active" (T, K) per sequence."""
    if not batches:
        raise ValueError("evaluate_sparse_controls needs at least one batch of composed sequences")
    match = jnp.asarray(matching)
    cols: dict[str, list] = {}
    for batch in batches:
        out = _batch_scores(model, jnp.asarray(batch["frames"]), jnp.asarray(batch["active"]), match)
        for name, value in out.items():
            cols.setdefault(name, []).append(np.asarray(value))
    data = {name: np.concatenate(v) for name, v in cols.items()}
    truth = np.concatenate([np.asarray(b["active"]) for b in batches]).astype(bool)  # (N, T, K transformations)
    predicted = (data["spikes"] > 0.5)[:, :, np.asarray(matching)]  # flow matched to transformation k, at k
    return {
        "num_sequences": int(truth.shape[0]),
        "active_per_step": float(truth.sum(2).mean()),
        "spikes": {
            **spike_scores(predicted, truth),
            "per_transformation": {
                name: spike_scores(predicted[..., k], truth[..., k]) for k, name in enumerate(transform_names)
            },
            "predicted_active_per_step": float(predicted.sum(2).mean()),
        },
        "composition_error": {
            "equivariance_error": float(data["inferred"].mean()),
            "equivariance_error_identity": float(data["identity"].mean()),
            "equivariance_error_true_active": float(data["true_active"].mean()),
        },
        "per_sequence": {
            "equivariance_error": [float(v) for v in data["inferred"]],
            "equivariance_error_identity": [float(v) for v in data["identity"]],
        },
        "matching": [int(j) for j in matching],
    }
