"""The figures of a run: per transformation data over model (PNG and GIF), flows composed, loss and
flow-usage curves, and samples along every flow. Paths are given; `viz` draws."""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ..evaluation import infers_flow
from ..interfaces import AbstractSequenceModel, AbstractSparseControlModel, AbstractTransportModel
from ..runs import RunError, RunSpec, eval_batches, read_metrics
from . import viz

LOSS_TERMS = (
    "loss",
    "recon",
    "kl0",
    "kl",
    "kl_flow",
    "hj",
    "q_distill",
    "agreement",
    "tc",
    "kl_slow",
    "wave",
    "classifier",
    "kl_spike",
    "kl_slab",
)


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
    spec: RunSpec,
    model: AbstractSequenceModel,
    test_batches: list[dict],
    out: Path,
    shifts: jax.Array,
    flows: list[int] | None = None,
) -> None:
    """Per transformation: data row over model row (PNG) and both animated (GIF); two flows composed;
    losses. `flows[k]`: the flow drawn for transformation k (a weak model's matched flow; default k).

    A model with no transformation of its own is drawn moving by the best linear shift `shifts`.
    """
    out.mkdir(parents=True, exist_ok=True)
    transforms = spec.transforms
    frames = np.concatenate([b["frames"] for b in test_batches])
    ks = np.concatenate([b["k"] for b in test_batches])
    moves = isinstance(model, AbstractTransportModel)
    if moves:
        transport = eqx.filter_jit(lambda m, k, z: m.transport(k, z))
    else:
        transport = eqx.filter_jit(lambda m, k, z: z[None] + shifts[k])
    encode = eqx.filter_jit(lambda m, x: m.encode(x)[0])
    flows = list(range(len(transforms))) if flows is None else flows
    inferred = infers_flow(model)
    for k, name in enumerate(transforms):
        picks = np.flatnonzero(ks == k)
        if not picks.size:
            continue
        x = frames[picks[0]]
        flow = flows[k] if moves else k
        z_path = transport(model, jnp.int32(flow), encode(model, jnp.asarray(x[0])))  # traced: one compile
        model_frames = np.asarray(_decode_path(model, z_path))
        viz.save_rows(
            out / f"flow_{name}.png", [x, model_frames], ["data", "model"], flow_label(k, flow, name, inferred)
        )
        viz.save_gif(out / f"flow_{name}.gif", [x, model_frames])
    if len(transforms) >= 2 and moves:
        _draw_composition(spec, model, jnp.asarray(frames[0, 0]), flows, out, encode)
    records = read_metrics(out.parent / "metrics.jsonl")
    if records:
        viz.save_loss_curves(out / "loss.png", records, LOSS_TERMS)
        if any("usage_0" in r for r in records):
            viz.save_usage_curves(out / "flow_usage.png", records, len(transforms))


def _draw_composition(spec: RunSpec, model: AbstractTransportModel, x0, flows: list[int], out: Path, encode) -> None:
    names, k = spec.transforms, model.num_flows
    compose = eqx.filter_jit(lambda m, w, z: m.compose(w, z))
    z0 = encode(model, x0)
    a, b = flows[0], flows[1]
    rows = [
        np.asarray(_decode_path(model, compose(model, w, z0)))
        for w in (jax.nn.one_hot(a, k), jax.nn.one_hot(b, k), jax.nn.one_hot(a, k) + jax.nn.one_hot(b, k))
    ]
    title = f"composing {names[0]} and {names[1]}: dz/dt = ∇u^a + ∇u^b"
    viz.save_rows(out / f"compose_{names[0]}+{names[1]}.png", rows, [names[0], names[1], "both at once"], title)


def draw_decomposition(
    spec: RunSpec, model: AbstractSparseControlModel, out: Path, matching: list[int], *, num: int = 2
) -> list[Path]:
    """`num` composed test sequences decomposed (`decompose_<i>.png`): the data; the model following the
    controls it reads off the sequence; then each transformation's matched flow alone at those controls,
    labelled with the steps where it is truly on and where the model switches it on."""
    out.mkdir(parents=True, exist_ok=True)
    (batch,) = eval_batches(spec, "test", 1)
    names = spec.transforms
    encode = eqx.filter_jit(lambda m, x: m.encode(x)[0])
    path = eqx.filter_jit(lambda m, z, c: m.controlled_path(z, c))
    controls_of = eqx.filter_jit(lambda m, x: m.controls(x))
    written = []
    for i in range(min(num, len(batch["frames"]))):
        x, active = np.asarray(batch["frames"][i]), np.asarray(batch["active"][i]).astype(bool)
        z0, controls = encode(model, jnp.asarray(x[0])), controls_of(model, jnp.asarray(x))
        rows, labels = [x, np.asarray(_decode_path(model, path(model, z0, controls)))], ["data", "model"]
        for k, name in enumerate(names):
            flow = matching[k]
            alone = controls * jax.nn.one_hot(flow, model.num_flows)[None]
            rows.append(np.asarray(_decode_path(model, path(model, z0, alone))))
            on = "".join("x" if a else "." for a in active[:, k])
            inferred = "".join("x" if c else "." for c in np.asarray(controls[:, flow]) != 0)
            labels.append(f"{name} (flow {flow}) alone\ntrue  {on}\nmodel {inferred}")
        target = out / f"decompose_{i}.png"
        title = f"{spec.dataset}, decomposed (x: on at that step)"
        viz.save_rows(target, rows, labels, title)
        written.append(target)
    return written


def draw_samples(spec: RunSpec, model: AbstractSequenceModel, run_dir: Path, *, num: int = 6, seed: int = 0) -> Path:
    """Random z_0 ~ N(0, I) pushed along every flow: one grid per transformation (rows = samples).

    A model that infers k draws, for each transformation, the flow eval.json matched to it (run
    `eval` first); without an eval.json its flows are drawn and named by index only.
    """
    if not isinstance(model, AbstractTransportModel):
        raise RunError(
            f"model {spec.method!r} learns no transformation to sample along; sample needs ffvae, poflow or tvae"
        )
    if num < 1:
        raise RunError(f"--num must be ≥ 1, got {num}")
    out = run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    z0s = jr.normal(jr.key(seed), (num, spec.model.latent_dim))
    transport = eqx.filter_jit(lambda m, k, z: jax.vmap(lambda z: m.transport(k, z))(z))
    inferred = infers_flow(model)
    result_path = run_dir / "eval.json"
    result = json.loads(result_path.read_text()) if inferred and result_path.exists() else None
    flows = matched_flows(result, model.num_flows)
    for k, name in enumerate(spec.transforms):
        paths = transport(model, jnp.int32(flows[k]), z0s)  # traced: one compile for every flow
        rows = [np.asarray(_decode_path(model, p)) for p in paths]
        if inferred and result is None:
            stem, title = f"samples_flow{k}", f"samples along flow {k} (run eval to match flows to transformations)"
        else:
            stem, title = f"samples_{name}", f"samples along {flow_label(k, flows[k], name, inferred)}"
        viz.save_rows(out / f"{stem}.png", rows, [f"z{i}" for i in range(num)], title)
    return out
