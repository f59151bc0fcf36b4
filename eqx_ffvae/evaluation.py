"""Held-out evaluation of a model over batches of sequences: SPEC §5 metrics, per transformation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray
from scipy.optimize import linear_sum_assignment

from . import metrics
from .interfaces import AbstractSequenceModel, AbstractTransportModel
from .model import FlowFactorizedVAE


@eqx.filter_jit
def _shift_sums(model, frames, ks, num_flows):
    return metrics.linear_shift_sums(model, frames, ks, num_flows)


@eqx.filter_jit
def _scores(model, frames, ks, shifts, key, num_samples):
    keys = jr.split(key, frames.shape[0])
    inferred = infers_flow(model)

    def one(args):
        x, k, kk = args
        linear = metrics.equivariance_error_linear(model, x, k, shifts)
        flow = jnp.argmax(model.flow_posterior_logits(x)) if inferred else k
        if inferred:
            ll = metrics.marginal_log_likelihood(model, x, key=kk, num_samples=num_samples)
        else:
            ll = metrics.log_likelihood(model, x, k, key=kk, num_samples=num_samples)
        return (
            metrics.equivariance_error(model, x, flow) if has_transport(model) else linear,
            metrics.equivariance_error_identity(model, x),
            linear,
            ll,
            flow,
        )

    return jax.lax.map(one, (frames, ks, keys))


def has_transport(model: AbstractSequenceModel) -> bool:
    """Whether the model learns its own transformation; if not, it is scored by the linear shift."""
    return isinstance(model, AbstractTransportModel)


def infers_flow(model: AbstractSequenceModel) -> bool:
    """Whether the model does not observe k: it is scored with the flow its q(k | x̄) infers (SPEC §5)."""
    return isinstance(model, FlowFactorizedVAE) and model.config.infers_flow


def flow_assignment(true_ks: np.ndarray, flows: np.ndarray, num_flows: int) -> dict:
    """How inferred flows line up with the true transformations (SPEC §5).

    `confusion[k][j]`: held-out sequences of transformation k sent to flow j; `matching[k]`: the flow
    of transformation k under the one-to-one matching with the most agreements (Hungarian);
    `accuracy`: the fraction of sequences whose flow is their transformation's matched flow;
    `usage[j]`: the fraction of sequences sent to flow j.
    """
    confusion = np.zeros((num_flows, num_flows), np.int64)
    np.add.at(confusion, (np.asarray(true_ks), np.asarray(flows)), 1)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    matching = np.empty(num_flows, np.int64)
    matching[rows] = cols
    n = max(int(confusion.sum()), 1)
    return {
        "accuracy": float(confusion[rows, cols].sum() / n),
        "confusion": confusion.tolist(),
        "matching": [int(j) for j in matching],
        "usage": [float(u) for u in confusion.sum(0) / n],
    }


def fit_linear_shifts(model: AbstractSequenceModel, batches: Iterable[dict], num_flows: int) -> jax.Array:
    """SPEC §5's best linear shift Δ_{k,t}, averaged over the given (training) batches."""
    sums, counts = None, None
    for batch in batches:
        s, c = _shift_sums(model, jnp.asarray(batch["frames"]), jnp.asarray(batch["k"]), num_flows)
        sums, counts = (s, c) if sums is None else (sums + s, counts + c)
    if sums is None:
        raise ValueError("fit_linear_shifts needs at least one batch")
    return metrics.linear_shifts(sums, counts)


def evaluate(
    model: AbstractSequenceModel,
    test_batches: Iterable[dict],
    shifts: jax.Array,
    *,
    transform_names: Sequence[str],
    key: PRNGKeyArray,
    num_samples: int = 100,
) -> dict:
    """Per transformation: E_k of the model's own transformation (the best linear shift for models
    without one, SPEC §5), of standing still and of the linear shift; importance-sampled
    log-likelihood (nats per image) overall and per frame; sequence counts.

    A model that does not observe k (`infers_flow`) moves each sequence along the flow its
    q(k | x̄) infers, its likelihood marginalises k, and the result gains `flow_assignment`
    (`flow_assignment()`): E_k stays per *true* transformation.
    """
    cols: dict[str, list] = {"k": [], "own": [], "identity": [], "linear": [], "ll": [], "flow": []}
    for i, batch in enumerate(test_batches):
        frames, ks = jnp.asarray(batch["frames"]), jnp.asarray(batch["k"])
        scores = _scores(model, frames, ks, shifts, jr.fold_in(key, i), num_samples)
        for name, value in zip(cols, (ks, *scores)):
            cols[name].append(np.asarray(value))
    if not cols["k"]:
        raise ValueError("evaluate needs at least one test batch")
    data = {name: np.concatenate(v) for name, v in cols.items()}
    out: dict = {"transformations": {}, "transformation": "own" if has_transport(model) else "linear shift"}
    for k, name in enumerate(transform_names):
        sel = data["k"] == k
        n = int(sel.sum())
        entry = {"num_sequences": n}
        if n:
            entry.update(
                equivariance_error=float(data["own"][sel].mean()),
                equivariance_error_identity=float(data["identity"][sel].mean()),
                equivariance_error_linear=float(data["linear"][sel].mean()),
                log_likelihood=float(data["ll"][sel].mean()),
                log_likelihood_per_frame=[float(v) for v in data["ll"][sel].mean(0)],
            )
        out["transformations"][name] = entry
    out["log_likelihood"] = float(data["ll"].mean())
    out["log_likelihood_per_frame"] = [float(v) for v in data["ll"].mean(0)]
    out["num_sequences"] = int(data["k"].size)
    out["num_importance_samples"] = num_samples
    if infers_flow(model):
        out["flow_assignment"] = flow_assignment(data["k"], data["flow"], len(transform_names))
    return out


def format_table(result: dict) -> str:
    """eval.json as a text table: one row per transformation."""
    head = f"{'transformation':<20} {'E_k model':>10} {'E_k identity':>13} {'E_k linear':>11} {'model/id':>8} {'log p(x)':>10} {'n':>5}"
    lines = [head, "-" * len(head)]
    for name, e in result["transformations"].items():
        if not e["num_sequences"]:
            lines.append(f"{name:<20} {'(no sequences)':>10}")
            continue
        ratio = e["equivariance_error"] / e["equivariance_error_identity"]
        lines.append(
            f"{name:<20} {e['equivariance_error']:>10.2f} {e['equivariance_error_identity']:>13.2f} "
            f"{e['equivariance_error_linear']:>11.2f} {ratio:>8.3f} {e['log_likelihood']:>10.2f} {e['num_sequences']:>5}"
        )
    if result.get("transformation") == "linear shift":
        lines.append("E_k model: this model learns no transformation, so it is the best linear shift (SPEC §5)")
    lines.append(f"log-likelihood (mean over frames and sequences): {result['log_likelihood']:.2f} nats/image")
    if "flow_assignment" in result:
        fa, names = result["flow_assignment"], list(result["transformations"])
        matched = ", ".join(f"{name} → flow {j}" for name, j in zip(names, fa["matching"]))
        usage = " / ".join(f"{u:.2f}" for u in fa["usage"])
        lines.append(f"k inferred by q(k|x̄): matched accuracy {fa['accuracy']:.3f} ({matched}); flow usage {usage}")
    return "\n".join(lines)
