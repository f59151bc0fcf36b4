"""`eval` and `sample`: held-out metrics (eval.json + table) and figures of a run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from loop import RunError, RunSpec, train_dataset

from eqx_ffvae import data, viz
from eqx_ffvae.evaluation import (
    evaluate,
    fit_linear_shifts,
    format_table,
    has_transport,
    infers_flow,
)

EVAL_SEED = 1234
LOSS_TERMS = (
    "loss", "recon", "kl0", "kl", "kl_flow", "hj", "q_distill", "agreement", "tc", "kl_slow", "wave", "classifier"
)


def _batches(spec: RunSpec, split: str, batch_size: int, count: int):
    ds = train_dataset(spec, split=split, seed=EVAL_SEED, num_epochs=1 if split == "test" else None)
    it = data.batch_iterator(ds, batch_size, drop_remainder=False)
    return [{"frames": b["frames"], "k": b["k"]} for b in itertools.islice(it, count)]


def run_eval(spec: RunSpec, model, run_dir: Path, *, figures: bool = True, quiet: bool = False) -> dict:
    """Evaluate on held-out sequences, write eval.json, print the table, draw the figures."""
    ev = spec.eval
    info = data.dataset_info(spec.dataset)
    bs = ev["eval_batch_size"]
    test = _batches(spec, "test", bs, -(-ev["eval_sequences"] // bs))
    shifts = fit_linear_shifts(model, _batches(spec, "train", bs, ev["shift_batches"]), info.num_flows)
    result = evaluate(
        model, test, shifts, transform_names=info.transforms, key=jr.key(EVAL_SEED), num_samples=ev["ll_samples"]
    )
    result["dataset"] = spec.dataset
    result["model"] = spec.method
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    if not quiet:
        print(format_table(result))
    if figures:
        draw_figures(spec, model, test, run_dir / "figures", shifts, matched_flows(result, info.num_flows))
    return result


def matched_flows(result: dict | None, num_flows: int) -> list[int]:
    """The flow of each transformation: its matched flow for a model that infers k (eval.json's
    `flow_assignment`), else flow k itself."""
    if result and "flow_assignment" in result:
        return list(result["flow_assignment"]["matching"])
    return list(range(num_flows))


def flow_label(k: int, flow: int, name: str, inferred: bool) -> str:
    """'flow 2: rotation' for a supervised model; 'flow 2 (matched to rotation)' when k was inferred."""
    return f"flow {flow} (matched to {name})" if inferred else f"flow {flow}: {name}"


@eqx.filter_jit
def _decode_path(model, zs):
    return jax.nn.sigmoid(jax.vmap(model.decode)(zs))


def draw_figures(
    spec: RunSpec, model, test_batches: list[dict], out: Path, shifts: jax.Array, flows: list[int] | None = None
) -> None:
    """Per transformation: data row over model row (PNG) and both animated (GIF); two flows composed;
    losses. `flows[k]`: the flow drawn for transformation k (a weak model's matched flow; default k).

    A model with no transformation of its own is drawn moving by the best linear shift `shifts`.
    """
    out.mkdir(parents=True, exist_ok=True)
    info = data.dataset_info(spec.dataset)
    frames = np.concatenate([b["frames"] for b in test_batches])
    ks = np.concatenate([b["k"] for b in test_batches])
    if has_transport(model):
        transport = eqx.filter_jit(lambda m, k, z: m.transport(k, z))
    else:
        transport = eqx.filter_jit(lambda m, k, z: z[None] + shifts[k])
    compose = eqx.filter_jit(lambda m, w, z: m.compose(w, z))
    encode = eqx.filter_jit(lambda m, x: m.encode(x)[0])
    flows = list(range(info.num_flows)) if flows is None else flows
    inferred = infers_flow(model)
    for k, name in enumerate(info.transforms):
        picks = np.flatnonzero(ks == k)
        if not picks.size:
            continue
        x = frames[picks[0]]
        flow = flows[k] if has_transport(model) else k
        z_path = transport(model, jnp.int32(flow), encode(model, jnp.asarray(x[0])))  # traced: one compile
        model_frames = np.asarray(_decode_path(model, z_path))
        title = flow_label(k, flow, name, inferred)
        viz.save_rows(out / f"flow_{name}.png", [x, model_frames], ["data", "model"], title)
        viz.save_gif(out / f"flow_{name}.gif", [x, model_frames])
    if info.num_flows >= 2 and hasattr(model, "compose"):
        a, b = flows[0], flows[1]
        x0 = jnp.asarray(frames[0, 0])
        z0 = encode(model, x0)
        rows, labels = [], []
        for weights, label in (
            (jax.nn.one_hot(a, info.num_flows), info.transforms[0]),
            (jax.nn.one_hot(b, info.num_flows), info.transforms[1]),
            (jax.nn.one_hot(a, info.num_flows) + jax.nn.one_hot(b, info.num_flows), "both at once"),
        ):
            rows.append(np.asarray(_decode_path(model, compose(model, weights, z0))))
            labels.append(label)
        title = f"composing {info.transforms[0]} and {info.transforms[1]}: dz/dt = ∇u^a + ∇u^b"
        viz.save_rows(out / f"compose_{info.transforms[0]}+{info.transforms[1]}.png", rows, labels, title)
    metrics_path = out.parent / "metrics.jsonl"
    if metrics_path.exists():
        records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        if records:
            viz.save_loss_curves(out / "loss.png", records, LOSS_TERMS)
            if any("usage_0" in r for r in records):
                viz.save_usage_curves(out / "flow_usage.png", records, info.num_flows)


def run_sample(spec: RunSpec, model, run_dir: Path, *, num: int = 6, seed: int = 0) -> Path:
    """Random z_0 ~ N(0, I) pushed along every flow: one grid per transformation (rows = samples).

    A model that infers k draws, for each transformation, the flow eval.json matched to it (run
    `eval` first); without an eval.json its flows are drawn and named by index only.
    """
    if not has_transport(model):
        raise RunError(f"model {spec.method!r} learns no transformation to sample along; sample needs ffvae, poflow or tvae")
    info = data.dataset_info(spec.dataset)
    out = run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    z0s = jr.normal(jr.key(seed), (num, spec.model["latent_dim"]))
    transport = eqx.filter_jit(lambda m, k, z: jax.vmap(lambda z: m.transport(k, z))(z))
    inferred = infers_flow(model)
    result_path = run_dir / "eval.json"
    result = json.loads(result_path.read_text()) if inferred and result_path.exists() else None
    flows = matched_flows(result, info.num_flows)
    for k, name in enumerate(info.transforms):
        paths = transport(model, jnp.int32(flows[k]), z0s)  # traced: one compile for every flow
        rows = [np.asarray(_decode_path(model, p)) for p in paths]
        if inferred and result is None:
            stem, title = f"samples_flow{k}", f"samples along flow {k} (run eval to match flows to transformations)"
        else:
            stem, title = f"samples_{name}", f"samples along {flow_label(k, flows[k], name, inferred)}"
        viz.save_rows(out / f"{stem}.png", rows, [f"z{i}" for i in range(num)], title)
    print(f"wrote {len(info.transforms)} sample grids to {out}")
    return out
