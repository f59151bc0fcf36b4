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
)

EVAL_SEED = 1234
LOSS_TERMS = ("loss", "recon", "kl0", "kl", "kl_flow", "hj", "kl_k", "tc", "kl_slow", "wave", "classifier")


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
        draw_figures(spec, model, test, run_dir / "figures", shifts)
    return result


@eqx.filter_jit
def _decode_path(model, zs):
    return jax.nn.sigmoid(jax.vmap(model.decode)(zs))


def draw_figures(spec: RunSpec, model, test_batches: list[dict], out: Path, shifts: jax.Array) -> None:
    """Per flow: data row over model row (PNG) and both animated (GIF); two flows composed; losses.

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
    for k, name in enumerate(info.transforms):
        picks = np.flatnonzero(ks == k)
        if not picks.size:
            continue
        x = frames[picks[0]]
        z_path = transport(model, jnp.int32(k), encode(model, jnp.asarray(x[0])))  # k traced: one compile
        model_frames = np.asarray(_decode_path(model, z_path))
        viz.save_rows(out / f"flow_{name}.png", [x, model_frames], ["data", "model"], f"flow {k}: {name}")
        viz.save_gif(out / f"flow_{name}.gif", [x, model_frames])
    if info.num_flows >= 2 and hasattr(model, "compose"):
        a, b = 0, 1
        x0 = jnp.asarray(frames[0, 0])
        z0 = encode(model, x0)
        rows, labels = [], []
        for weights, label in (
            (jax.nn.one_hot(a, info.num_flows), info.transforms[a]),
            (jax.nn.one_hot(b, info.num_flows), info.transforms[b]),
            (jax.nn.one_hot(a, info.num_flows) + jax.nn.one_hot(b, info.num_flows), "both at once"),
        ):
            rows.append(np.asarray(_decode_path(model, compose(model, weights, z0))))
            labels.append(label)
        title = f"composing {info.transforms[a]} and {info.transforms[b]}: dz/dt = ∇u^a + ∇u^b"
        viz.save_rows(out / f"compose_{info.transforms[a]}+{info.transforms[b]}.png", rows, labels, title)
    metrics_path = out.parent / "metrics.jsonl"
    if metrics_path.exists():
        records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        if records:
            viz.save_loss_curves(out / "loss.png", records, LOSS_TERMS)


def run_sample(spec: RunSpec, model, run_dir: Path, *, num: int = 6, seed: int = 0) -> Path:
    """Random z_0 ~ N(0, I) pushed along every flow: one grid per flow (rows = samples)."""
    if not has_transport(model):
        raise RunError(f"model {spec.method!r} learns no transformation to sample along; sample needs ffvae, poflow or tvae")
    info = data.dataset_info(spec.dataset)
    out = run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    z0s = jr.normal(jr.key(seed), (num, spec.model["latent_dim"]))
    transport = eqx.filter_jit(lambda m, k, z: jax.vmap(lambda z: m.transport(k, z))(z))
    for k, name in enumerate(info.transforms):
        paths = transport(model, jnp.int32(k), z0s)  # k traced: one compile for every flow
        rows = [np.asarray(_decode_path(model, p)) for p in paths]
        viz.save_rows(out / f"samples_{name}.png", rows, [f"z{i}" for i in range(num)], f"samples along {name}")
    print(f"wrote {len(info.transforms)} sample grids to {out}")
    return out
