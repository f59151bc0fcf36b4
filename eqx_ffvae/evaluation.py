"""Held-out evaluation of a model over batches of sequences: docs/method.md §5 metrics, per transformation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from . import metrics
from .data.transforms import MNIST_PAIRS
from .flow_model import AbstractPotentialFlowModel
from .interfaces import (
    AbstractFlowInferenceModel,
    AbstractSequenceModel,
    AbstractSparseControlModel,
    AbstractTransportModel,
)


@eqx.filter_jit
def _shift_sums(model, frames, ks, num_flows):
    return metrics.linear_shift_sums(model, frames, ks, num_flows)


@eqx.filter_jit
def _inferred_flows(model, frames):
    return jax.vmap(lambda x: jnp.argmax(model.flow_posterior_logits(x)))(frames)


def group_by_inferred_flow(model: AbstractFlowInferenceModel, batches: Sequence[dict]) -> list[dict]:
    """`batches` with each sequence's "k" replaced by the flow the model's q(k | x̄) infers for it: how
    unlabelled sequences are grouped for `evaluate` (their E "per transformation" is then per flow)."""
    return [{**b, "k": np.asarray(_inferred_flows(model, jnp.asarray(b["frames"])), np.int32)} for b in batches]


def unlabelled_result(result: dict, pooled_shift_flows: Sequence[int] = ()) -> dict:
    """`evaluate`'s result on sequences grouped by inferred flow (`group_by_inferred_flow`), stated as
    such: what needs labels (E per true transformation, the flows' agreement with them) is named as
    not measured; q's usage of each flow stays, and the flows whose linear shift is the pooled one
    (`fit_grouped_linear_shifts`) are listed."""
    out = {name: value for name, value in result.items() if name != "flow_assignment"}
    names = list(result["transformations"])
    out["linear_shift_pooled_for"] = [names[j] for j in pooled_shift_flows]
    usage = result["flow_assignment"]["usage"]
    out["labelled"] = False
    out["grouped_by"] = "the flow each sequence's q(k | x̄) infers (the data has no labels k)"
    out["flow_usage"] = {name: share for name, share in zip(result["transformations"], usage)}
    out["not_measured"] = (
        "E_k per true transformation, the flows' agreement with the transformations (accuracy, matching): "
        "they need labels k"
    )
    return out


@eqx.filter_jit
def _likelihoods(model, frames, ks, keys, num_samples):
    """Each sequence's per-frame log p(x_t) and effective sample size (`jax.lax.map` over the sequences)."""

    def one(args):
        x, k, kk = args
        if infers_flow(model) and not isinstance(model, AbstractSparseControlModel):
            return metrics.marginal_log_likelihood(model, x, key=kk, num_samples=num_samples)
        return metrics.log_likelihood(model, x, k, key=kk, num_samples=num_samples)

    return jax.lax.map(one, (frames, ks, keys))


def _likelihood_pass(model, batches, count, key, num_samples, desc):
    """(log p per frame, ESS per frame) of the first `count` sequences of `batches`, sequence i drawn
    with `fold_in(key, i)`: the same draws whichever batches they arrive in."""
    lls, ess, done = [], [], 0
    with tqdm(total=count, desc=desc, unit="seq", leave=False) as bar:
        for batch in batches:
            take = min(batch["frames"].shape[0], count - done)
            if take <= 0:
                break
            keys = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(done, done + take))
            ll, e = _likelihoods(model, batch["frames"][:take], batch["k"][:take], keys, num_samples)
            lls.append(np.asarray(ll)), ess.append(np.asarray(e))
            done += take
            bar.update(take)
    return np.concatenate(lls), np.concatenate(ess)


@eqx.filter_jit
def _scores(model, batch, shifts, matching):
    """Every per-sequence E of docs/method.md §5 for one batch (`jax.lax.map` over its sequences)."""
    frames, ks = batch["frames"], batch["k"]
    inferred, transport = infers_flow(model), has_transport(model)
    horizon = frames.shape[1] - 1
    probes = "extrapolation" in batch
    num_flows = shifts.shape[0]

    def one(args):
        x, k = args[:2]
        mu, _ = model.encode(x[0])
        flow = jnp.argmax(model.flow_posterior_logits(x)) if inferred else k
        out = {
            "flow": flow,
            "linear": metrics.equivariance_error_linear(model, x, k, shifts),
            "identity": metrics.equivariance_error_identity(model, x),
            "identity_changed": metrics.equivariance_error_identity(model, x, pixels="changed"),
            "changed_pixels": jnp.sum(metrics.changed_pixels(x)[:, 0]),
        }
        if isinstance(model, AbstractSparseControlModel):
            out["own"] = metrics.equivariance_error_controlled(model, x)
            out["own_changed"] = metrics.equivariance_error_controlled(model, x, pixels="changed")
        elif transport:
            out["own"] = metrics.equivariance_error(model, x, flow)
            out["own_changed"] = metrics.equivariance_error(model, x, flow, pixels="changed")
        else:
            out["own"] = out["linear"]
            out["own_changed"] = metrics.equivariance_error_linear(model, x, k, shifts, pixels="changed")
        if isinstance(model, AbstractPotentialFlowModel):
            path = model.map_density(flow, mu, 0.0)
            out["min_eigenvalue"], out["logdet_gap"] = path.min_eigenvalue, path.logdet_gap
            fine = model.map_density(flow, mu, 0.0, model.proposal_steps_per_frame)
            out["proposal_min_eigenvalue"] = fine.min_eigenvalue
        if probes:
            extra, pairs = args[2], args[3]
            linear = mu[None] + metrics.continued_shifts(shifts, horizon)[k]
            out["extrapolation_linear"] = metrics.l1_error(model, linear, extra)
            out["extrapolation_identity"] = metrics.l1_error(model, jnp.broadcast_to(mu, linear.shape), extra)
            out["extrapolation"] = (
                metrics.l1_error(model, metrics.extrapolation_path(model, x[0], flow, horizon), extra)
                if transport
                else out["extrapolation_linear"]
            )
            pair_ids = jnp.asarray(MNIST_PAIRS)

            def pair(ab, target):
                zs_lin = (mu[None] + shifts[ab[0]] + shifts[ab[1]])[1:]
                lin = metrics.l1_error(model, zs_lin, target[1:])
                ident = metrics.l1_error(model, jnp.broadcast_to(mu, zs_lin.shape), target[1:])
                if not transport:
                    return lin, lin, ident
                weights = jnp.sum(jax.nn.one_hot(matching[ab], num_flows), axis=0)
                zs = metrics.composition_path(model, x[0], weights, horizon + 1)
                return metrics.l1_error(model, zs[1:], target[1:]), lin, ident

            out["composition"], out["composition_linear"], out["composition_identity"] = jax.vmap(pair)(pair_ids, pairs)
        return out

    args = (frames, ks) + ((batch["extrapolation"], batch["composition"]) if probes else ())
    return jax.lax.map(one, args)


def has_transport(model: AbstractSequenceModel) -> bool:
    """Whether the model learns its own transformation; if not, it is scored by the linear shift."""
    return isinstance(model, AbstractTransportModel)


def infers_flow(model: AbstractSequenceModel) -> bool:
    """Whether the model does not observe k: it is scored with the flow its q(k | x̄) infers (docs/method.md §5)."""
    return isinstance(model, AbstractFlowInferenceModel)


def flow_assignment(true_ks: np.ndarray, flows: np.ndarray, num_flows: int) -> dict:
    """How inferred flows line up with the true transformations (docs/method.md §5).

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


def _summed_shifts(
    model: AbstractSequenceModel, batches: Iterable[dict], num_flows: int
) -> tuple[jax.Array, jax.Array]:
    sums, counts = None, None
    for batch in batches:
        s, c = _shift_sums(model, jnp.asarray(batch["frames"]), jnp.asarray(batch["k"]), num_flows)
        sums, counts = (s, c) if sums is None else (sums + s, counts + c)
    if sums is None:
        raise ValueError("fitting linear shifts needs at least one batch")
    return sums, counts


def fit_linear_shifts(model: AbstractSequenceModel, batches: Iterable[dict], num_flows: int) -> jax.Array:
    """docs/method.md §5's best linear shift Δ_{k,t}, averaged over the given (training) batches."""
    return metrics.linear_shifts(*_summed_shifts(model, batches, num_flows))


def fit_grouped_linear_shifts(
    model: AbstractSequenceModel, batches: Iterable[dict], num_flows: int
) -> tuple[jax.Array, list[int]]:
    """`fit_linear_shifts` for sequences grouped by inferred flow (`group_by_inferred_flow`), where q may
    send no training sequence to a flow: that flow gets the shift pooled over all sequences. Returns
    (shifts, the flows given the pooled shift)."""
    sums, counts = _summed_shifts(model, batches, num_flows)
    pooled = jnp.sum(sums, 0) / jnp.sum(counts)
    unused = counts == 0
    shifts = jnp.where(unused[:, None, None], pooled[None], sums / jnp.maximum(counts, 1)[:, None, None])
    return shifts, [int(j) for j in jnp.flatnonzero(unused)]


def evaluate(
    model: AbstractSequenceModel,
    test_batches: Sequence[dict],
    shifts: jax.Array,
    *,
    transform_names: Sequence[str],
    key: PRNGKeyArray,
    num_samples: int = 100,
    likelihood_sequences: int | None = None,
    drift_samples: int = 0,
    drift_sequences: int = 20,
) -> dict:
    """docs/method.md §5 on held-out batches. Per transformation: E_k with each probe the model admits —
    `equivariance_error` (its own transformation; the best linear shift for a model without one),
    `equivariance_error_linear`, `equivariance_error_identity` — the same over the pixels that change
    between x_0 and x_t (`…_changed`, `metrics.changed_pixels`), and past the trained horizon
    (`equivariance_error_extrapolation[_linear|_identity]`, t = T+1 … 2T); the mixture-proposal
    log-likelihood with `num_samples` draws per frame over the first `likelihood_sequences` sequences
    (all when None), overall and per frame with its `effective_sample_size`; with `drift_samples` > 0,
    `likelihood_drift`: the first `drift_sequences` of them again with `drift_samples` draws, and how
    far the estimate at `num_samples` lies from it (the estimator's resolution). Top level: E over
    pairs of transformations applied together (`equivariance_error_composition`, batches that carry
    the probes' ground truth, i.e. MNIST) and, for potential-flow models, per flow the smallest
    eigenvalue of I + h∇²u met along held-out paths from μ(x_0) (`min_eigenvalue`; the Euler map is
    invertible iff > 0) and the mean Σ(h Δu − log det(I + h∇²u)) at frame T (`logdet_gap`: how much
    lower the trace form puts log q_T).

    A model that does not observe k (`infers_flow`) moves each sequence along the flow its q(k | x̄)
    infers; composition uses the flows matched to the two transformations; its likelihood marginalises
    k, and the result gains `flow_assignment`. E_k stays per *true* transformation.

    `per_sequence` holds every held-out sequence's E (each probe), log-likelihood (mean over frames;
    the first `likelihood_sequences` only) and true k, for paired comparisons across methods.
    """
    test_batches = [{name: jnp.asarray(v) for name, v in batch.items()} for batch in test_batches]
    if not test_batches:
        raise ValueError("evaluate needs at least one test batch")
    total = sum(int(b["k"].shape[0]) for b in test_batches)
    num_ll = total if likelihood_sequences is None else likelihood_sequences
    if not 1 <= num_ll <= total:
        raise ValueError(f"likelihood_sequences must be in [1, {total}] (the held-out sequences), got {num_ll}")
    if drift_samples and not (drift_samples > num_samples and 1 <= drift_sequences <= num_ll):
        raise ValueError(
            f"the drift check needs drift_samples > num_samples = {num_samples} (got {drift_samples}) and "
            f"drift_sequences in [1, {num_ll}] (got {drift_sequences})"
        )
    num_flows = len(transform_names)
    ks = np.concatenate([np.asarray(b["k"]) for b in test_batches])
    assignment = None
    matching = jnp.arange(num_flows)
    if infers_flow(model):
        flows = np.concatenate([np.asarray(_inferred_flows(model, b["frames"])) for b in test_batches])
        assignment = flow_assignment(ks, flows, num_flows)
        matching = jnp.asarray(assignment["matching"])
    cols: dict[str, list] = {}
    for batch in tqdm(test_batches, desc="evaluate", unit="batch", leave=False):
        for name, value in _scores(model, batch, shifts, matching).items():
            cols.setdefault(name, []).append(np.asarray(value))
    data = {name: np.concatenate(v) for name, v in cols.items()}
    likelihood_key, drift_key = jr.split(key)
    ll, ess = _likelihood_pass(model, test_batches, num_ll, likelihood_key, num_samples, f"log p(x), S={num_samples}")
    ll_ks = ks[:num_ll]
    out: dict = {"transformations": {}, "transformation": "own" if has_transport(model) else "linear shift"}
    for k, name in enumerate(transform_names):
        sel, ll_sel = ks == k, ll_ks == k
        n = int(sel.sum())
        entry: dict = {"num_sequences": n, "num_likelihood_sequences": int(ll_sel.sum())}
        if n:
            entry.update(
                equivariance_error=float(data["own"][sel].mean()),
                equivariance_error_identity=float(data["identity"][sel].mean()),
                equivariance_error_linear=float(data["linear"][sel].mean()),
                equivariance_error_changed=float(data["own_changed"][sel].mean()),
                equivariance_error_identity_changed=float(data["identity_changed"][sel].mean()),
                changed_pixels_per_sequence=float(data["changed_pixels"][sel].mean()),
            )
        if ll_sel.any():
            entry.update(
                log_likelihood=float(ll[ll_sel].mean()),
                log_likelihood_per_frame=[float(v) for v in ll[ll_sel].mean(0)],
                effective_sample_size=float(ess[ll_sel].mean()),
            )
        if n and "extrapolation" in data:
            entry.update(
                equivariance_error_extrapolation=float(data["extrapolation"][sel].mean()),
                equivariance_error_extrapolation_linear=float(data["extrapolation_linear"][sel].mean()),
                equivariance_error_extrapolation_identity=float(data["extrapolation_identity"][sel].mean()),
            )
        out["transformations"][name] = entry
    out["log_likelihood"] = float(ll.mean())
    out["log_likelihood_per_frame"] = [float(v) for v in ll.mean(0)]
    out["effective_sample_size"] = float(ess.mean())
    out["effective_sample_size_per_frame"] = [float(v) for v in ess.mean(0)]
    out["num_sequences"] = int(ks.size)
    out["num_likelihood_sequences"] = num_ll
    out["num_importance_samples"] = num_samples
    out["likelihood_proposal"] = (
        "the model's own proposal only: z_0 ~ q(z_0|x_0) and hard spikes and slabs from q(s, g | x̄) (a sparse-"
        "control model has no closed-form density of z_t for the encoder half)"
        if isinstance(model, AbstractSparseControlModel)
        else "mixture in fixed numbers: ½ the model's own proposal for frame t, ½ its encoder on x_t, "
        "each draw weighted by its own half's density"
    )
    out["changed_pixel_threshold"] = metrics.CHANGED_PIXEL_THRESHOLD
    if drift_samples:
        more, more_ess = _likelihood_pass(
            model, test_batches, drift_sequences, drift_key, drift_samples, f"log p(x), S={drift_samples}"
        )
        diff = more.mean(1) - ll[:drift_sequences].mean(1)
        out["likelihood_drift"] = {
            "samples": drift_samples,
            "sequences": drift_sequences,
            "log_likelihood": float(more.mean()),
            "log_likelihood_at_num_samples": float(ll[:drift_sequences].mean()),
            "mean_difference": float(diff.mean()),
            "mean_abs_difference": float(np.abs(diff).mean()),
            "max_abs_difference": float(np.abs(diff).max()),
            "effective_sample_size": float(more_ess.mean()),
        }
    if "composition" in data:
        out["equivariance_error_composition"] = {
            f"{transform_names[a]}+{transform_names[b]}": {
                "equivariance_error": float(data["composition"][:, i].mean()),
                "equivariance_error_linear": float(data["composition_linear"][:, i].mean()),
                "equivariance_error_identity": float(data["composition_identity"][:, i].mean()),
            }
            for i, (a, b) in enumerate(MNIST_PAIRS)
        }
    if "min_eigenvalue" in data:
        out["flows"] = {}
        for j in range(num_flows):
            sel = data["flow"] == j
            label = transform_names[j] if not infers_flow(model) else f"flow {j}"
            out["flows"][label] = {
                "num_sequences": int(sel.sum()),
                "min_eigenvalue": float(data["min_eigenvalue"][sel].min()) if sel.any() else None,
                "proposal_min_eigenvalue": float(data["proposal_min_eigenvalue"][sel].min()) if sel.any() else None,
                "logdet_gap": float(data["logdet_gap"][sel, -1].mean()) if sel.any() else None,
                "logdet_gap_per_frame": [float(v) for v in data["logdet_gap"][sel].mean(0)] if sel.any() else None,
            }
    if assignment is not None:
        out["flow_assignment"] = assignment
    out["per_sequence"] = _per_sequence(data, ks, ll)
    return out


def _per_sequence(data: dict, ks: np.ndarray, ll: np.ndarray) -> dict:
    """Each held-out sequence's numbers (the order of the run's fixed evaluation set, the same for
    every method and seed): what `compare` and `claims` pair across methods for their seed-level intervals."""

    def col(values):
        return [float(v) for v in values]

    per = {"k": [int(k) for k in ks]}
    names = {
        "own": "equivariance_error",
        "linear": "equivariance_error_linear",
        "identity": "equivariance_error_identity",
        "own_changed": "equivariance_error_changed",
        "identity_changed": "equivariance_error_identity_changed",
    }
    if "extrapolation" in data:
        names |= {
            "extrapolation": "equivariance_error_extrapolation",
            "extrapolation_linear": "equivariance_error_extrapolation_linear",
            "extrapolation_identity": "equivariance_error_extrapolation_identity",
        }
    for short, name in names.items():
        per[name] = col(data[short])
    per["log_likelihood"] = col(ll.mean(1))
    if "composition" in data:
        for short in ("composition", "composition_linear", "composition_identity"):
            name = "equivariance_error_" + short
            per[name] = [col(row) for row in data[short]]
    return per
