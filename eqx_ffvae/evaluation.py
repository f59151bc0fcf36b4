"""Held-out evaluation of a model over batches of sequences: SPEC §5 metrics, per transformation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray

from . import metrics


@eqx.filter_jit
def _shift_sums(model, frames, ks, num_flows):
    return metrics.linear_shift_sums(model, frames, ks, num_flows)


@eqx.filter_jit
def _scores(model, frames, ks, shifts, key, num_samples):
    keys = jr.split(key, frames.shape[0])

    def one(args):
        x, k, kk = args
        linear = metrics.equivariance_error_linear(model, x, k, shifts)
        return (
            metrics.equivariance_error(model, x, k) if has_transport(model) else linear,
            metrics.equivariance_error_identity(model, x),
            linear,
            metrics.log_likelihood(model, x, k, key=kk, num_samples=num_samples),
        )

    return jax.lax.map(one, (frames, ks, keys))


def has_transport(model: Any) -> bool:
    """Whether the model learns its own transformation; if not, it is scored by the linear shift."""
    return hasattr(model, "transport")


def fit_linear_shifts(model: Any, batches: Iterable[dict], num_flows: int) -> jax.Array:
    """SPEC §5's best linear shift Δ_{k,t}, averaged over the given (training) batches."""
    sums, counts = None, None
    for batch in batches:
        s, c = _shift_sums(model, jnp.asarray(batch["frames"]), jnp.asarray(batch["k"]), num_flows)
        sums, counts = (s, c) if sums is None else (sums + s, counts + c)
    if sums is None:
        raise ValueError("fit_linear_shifts needs at least one batch")
    return metrics.linear_shifts(sums, counts)


def evaluate(
    model: Any,
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
    """
    cols: dict[str, list] = {"k": [], "flow": [], "identity": [], "linear": [], "ll": []}
    for i, batch in enumerate(test_batches):
        frames, ks = jnp.asarray(batch["frames"]), jnp.asarray(batch["k"])
        flow, ident, lin, ll = _scores(model, frames, ks, shifts, jr.fold_in(key, i), num_samples)
        for name, value in zip(cols, (ks, flow, ident, lin, ll)):
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
                equivariance_error=float(data["flow"][sel].mean()),
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
    return "\n".join(lines)
