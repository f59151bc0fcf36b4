"""A user's own sequences: arrays and .npz files, labelled and not, through Python and the command line."""

import dataclasses
import json
import re

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from conftest import TINY_ARGS, TINY_EVAL

from eqx_ffvae import cli, data, evaluation, methods, runs
from eqx_ffvae.data.arrays import UNLABELLED
from eqx_ffvae.reporting.evaluate import format_table

_TINY_SPEC = dict(
    steps=2, batch_size=8, latent_dim=4, width=4, potential_width=8, eval_sequences=4, ll_samples=2, drift_samples=0
)
"""`runs.resolve` overrides of the tiny model the Python-side tests train (the CLI's are conftest.TINY_ARGS)."""


def _mnist_sequences(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """n coloured MNIST sequences (uint8, [N, T+1, H, W, C] as images are usually stored) and their k."""
    ds = data.sequence_dataset("mnist", split="train", seed=3)
    items = [ds[i] for i in range(n)]
    frames = np.stack([np.round(item["frames"] * 255).astype(np.uint8) for item in items])
    return np.moveaxis(frames, 2, 4), np.array([item["k"] for item in items])


def test_layouts_and_dtypes_give_the_same_frames():
    frames, k = _mnist_sequences(12)
    data.register_sequences("own-nthwc", frames, k)
    data.register_sequences(
        "own-ntchw", np.moveaxis(frames, 4, 2).astype(np.float64) / 255, k, transforms=["scale", "rotation", "hue"]
    )
    a = data.sequence_dataset("own-nthwc", split="train", seed=1)
    b = data.sequence_dataset("own-ntchw", split="train", seed=1)
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        np.testing.assert_allclose(a[i]["frames"], b[i]["frames"], atol=1e-6)
        assert a[i]["frames"].shape == (9, 3, 28, 28) and a[i]["frames"].dtype == np.float32
        assert a[i]["k"] == k[a[i]["index"]]
    assert data.dataset_info("own-nthwc").transforms == ("transformation_0", "transformation_1", "transformation_2")
    # compact batches ship the uint8 frames; the device makes the same floats
    compact = data.sequence_dataset("own-nthwc", split="train", seed=1, compact=True)[0]["frames"]
    assert compact.dtype == np.uint8
    np.testing.assert_array_equal(
        np.asarray(data.device.frames({"frames": jnp.asarray(compact[None])}, 9))[0], a[0]["frames"]
    )


def _bad(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


_GOOD = np.zeros((40, 9, 28, 28, 3), np.uint8)


@pytest.mark.parametrize(
    "case, arrays, says",
    [
        ("rank", {"frames": _GOOD[:, :, :, :, 0]}, "must have rank 5"),
        ("layout", {"frames": np.zeros((40, 9, 3, 8, 3), np.uint8), "num_flows": 2}, "cannot tell the channel axis"),
        ("dtype", {"frames": _GOOD.astype(np.int64), "num_flows": 2}, "must be uint8"),
        ("nan", {"frames": np.where(np.arange(28)[:, None] == 3, np.nan, _GOOD / 255.0), "num_flows": 2}, "NaN or inf"),
        ("inf", {"frames": np.where(np.arange(28)[:, None] == 3, np.inf, _GOOD / 255.0), "num_flows": 2}, "NaN or inf"),
        ("range", {"frames": _GOOD.astype(np.float32) + 2, "num_flows": 2}, "must be in [0, 1]"),
        ("k range", {"frames": _GOOD, "k": np.full(40, 3), "transforms": np.array(["a", "b"])}, "k must be in [0, 2)"),
        ("k length", {"frames": _GOOD, "k": np.zeros(39, np.int64)}, "one label per sequence"),
        ("k float", {"frames": _GOOD, "k": np.full(40, 0.5)}, "k must hold integers"),
        ("no count", {"frames": _GOOD}, "number of transformations must be given"),
        ("ragged", {"frames": np.array([_GOOD[0], _GOOD[1, :5]], dtype=object)}, "object array"),
        ("few", {"frames": _GOOD[:6], "k": np.zeros(6, np.int64)}, "fewer than --batch-size 8"),
        ("held out", {"frames": _GOOD, "k": np.zeros(40, np.int64)}, "too few to hold out test (and validation)"),
        ("supervised", {"frames": _GOOD, "num_flows": 2}, "has no labels k"),
        ("size", {"frames": np.zeros((40, 9, 30, 30, 3), np.uint8), "num_flows": 2}, "30×30 images"),
    ],
)
def test_bad_data_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case, arrays, says):
    path = _bad(tmp_path, **arrays)
    out = tmp_path / "run"
    model = ["--model", "ffvae"] if case == "supervised" else ["--model", "ffvae-weak"]
    if case == "held out":  # 1% of 40 sequences rounds to no validation sequence
        model += ["--validation-fraction", "0.01"]
    assert cli.main(["--data", str(path), *model, *TINY_ARGS, "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and str(path) in err, err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("content", [b"not an archive", None])
def test_an_unreadable_or_missing_file_is_named(tmp_path, capsys, content):
    path = tmp_path / "sequences.npz"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "run"
    assert cli.main(["--data", str(path), *TINY_ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and len(err.splitlines()) == 1, err
    assert ("not an .npz archive" if content else "does not exist") in err
    assert not out.exists()


def test_a_labelled_file_trains_evaluates_and_resumes_on_the_command_line(tmp_path):
    frames, k = _mnist_sequences()
    path = tmp_path / "mine.npz"
    np.savez(path, frames=frames, k=k, transforms=np.array(["grow", "turn", "tint"]))
    out = tmp_path / "run"
    args = [
        "--data",
        str(path),
        "--model",
        "ffvae",
        *TINY_ARGS,
        *TINY_EVAL,
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
    ]
    assert cli.main([*args, "--steps", "2"]) == 0
    assert cli.main([*args, "--steps", "3"]) == 0  # resumes from step 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 and steps.count(1) == 1
    spec = runs.read_spec(out)
    assert spec.dataset == data.file_dataset(path) and spec.transforms == ("grow", "turn", "tint")
    result = json.loads((out / "eval.json").read_text())
    assert set(result["transformations"]) == {"grow", "turn", "tint"}
    assert "grouped_by" not in result
    assert cli.main(["eval", "--run", str(out)]) == 0  # a fresh spec reads the file again by its name


def test_unlabelled_sequences_train_weakly_and_evaluate_without_labels(tmp_path):
    frames, _ = _mnist_sequences()
    data.register_sequences("own-unlabelled", frames, num_flows=3)
    with pytest.raises(runs.RunError, match="has no labels k"):
        runs.resolve("quick", method="poflow", dataset="own-unlabelled")
    spec = runs.resolve("quick", method="ffvae-weak", dataset="own-unlabelled", **_TINY_SPEC)
    assert all(int(b["k"]) == UNLABELLED for b in runs.sequences(spec, num_epochs=1))
    run = runs.TrainingRun(spec, tmp_path / "run")
    for _ in run:
        pass
    spec = dataclasses.replace(spec, steps=3)
    model = runs.train(spec, tmp_path / "run")  # resumes at step 2
    assert [r["step"] for r in runs.read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    result = runs.evaluate_run(spec, model)
    assert result["labelled"] is False and "need labels k" in result["not_measured"]
    table = format_table(result)
    assert "rows are grouped by the flow each sequence's q(k | x̄) infers" in table and "not measured: E_k" in table
    assert "flow_assignment" not in result
    usage = result["flow_usage"]
    assert list(usage) == ["flow 0", "flow 1", "flow 2"] and sum(usage.values()) == pytest.approx(1.0)
    for name, entry in result["transformations"].items():  # per inferred flow, as many as q sent there
        assert entry["num_sequences"] == round(usage[name] * result["num_sequences"])
    assert np.isfinite(result["log_likelihood"])


def test_grouped_linear_shifts_pool_the_flows_q_never_uses():
    config = methods.make_config("vae", image_shape=(3, 28, 28), num_frames=4, num_flows=3, latent_dim=4, width=4)
    model = methods.make_model("vae", config, key=jr.key(0))
    frames = jnp.asarray(np.random.default_rng(0).uniform(size=(12, 4, 3, 28, 28)), jnp.float32)

    def fit(batch_frames, ks, flows=3):
        return evaluation.fit_linear_shifts(model, [{"frames": batch_frames, "k": jnp.asarray(ks)}], flows)

    grouped, pooled = evaluation.fit_grouped_linear_shifts(model, [{"frames": frames, "k": jnp.arange(12) % 3}], 3)
    np.testing.assert_allclose(grouped, fit(frames, np.arange(12) % 3), rtol=1e-6)
    assert pooled == []
    ks = np.where(np.arange(12) < 5, 0, 2)  # flow 1 never used
    grouped, pooled = evaluation.fit_grouped_linear_shifts(model, [{"frames": frames, "k": jnp.asarray(ks)}], 3)
    assert pooled == [1]
    np.testing.assert_allclose(grouped[1], fit(frames, np.zeros(12, int), 1)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grouped[0], fit(frames[:5], np.zeros(5, int), 1)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grouped[2], fit(frames[5:], np.zeros(7, int), 1)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_non_square_rgb_dataset_trains_and_evaluates_with_the_gaussian_decoder(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.uniform(size=(24, 4, 32, 48, 3)).astype(np.float32)  # [N, T+1, H, W, C], float in [0, 1]
    data.register_sequences("own-32x48", frames, rng.integers(0, 2, 24), transforms=["pan", "tilt"])
    spec = runs.resolve("quick", method="ffvae", dataset="own-32x48", likelihood="gaussian", **_TINY_SPEC)
    assert spec.model.image_shape == (3, 32, 48) and spec.model.likelihood == "gaussian"
    run = runs.TrainingRun(spec, tmp_path / "run")
    for _ in run:
        pass
    before = runs.build(spec)[0].decoder.pixels.log_scale
    assert not np.allclose(run.model.decoder.pixels.log_scale, before)  # σ is learned
    longer = dataclasses.replace(spec, steps=3)
    model = runs.train(longer, tmp_path / "run")  # resumes from the checkpoint at step 2
    assert [r["step"] for r in runs.read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    result = runs.evaluate_run(longer, model)
    assert set(result["transformations"]) == {"pan", "tilt"} and np.isfinite(result["log_likelihood"])


@pytest.mark.slow  # the command line's unlabelled path; the default set trains unlabelled data from Python
def test_an_unlabelled_file_trains_resumes_and_evaluates_on_the_command_line(tmp_path):
    frames, _ = _mnist_sequences()
    path = tmp_path / "unlabelled.npz"
    np.savez(path, frames=frames, num_flows=3)
    out = tmp_path / "run"
    args = ["--data", str(path), "--model", "ffvae-weak", *TINY_ARGS, *TINY_EVAL, "--checkpoint-every", "2"]
    assert cli.main([*args, "--steps", "2", "--out", str(out)]) == 0
    assert cli.main([*args, "--steps", "3", "--out", str(out)]) == 0
    assert [r["step"] for r in runs.read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert cli.main(["eval", "--run", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["labelled"] is False and list(result["flow_usage"]) == ["flow 0", "flow 1", "flow 2"]


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda: data.sequences_from_arrays(_GOOD, layout="nchw"), "layout must be one of auto, ntchw, nthwc"),
        (lambda: data.sequences_from_arrays(_GOOD[:, :1], num_flows=2), "at least 2 frames"),
        (
            lambda: data.sequences_from_arrays(np.zeros((4, 3, 2, 8, 8), np.uint8), num_flows=1, layout="ntchw"),
            "1 or 3 channels",
        ),
        (lambda: data.sequences_from_arrays(_GOOD, transforms=["a", "a"]), "distinct names"),
        (lambda: data.sequences_from_arrays(_GOOD, transforms=["a", "b"], num_flows=3), "num_flows = 3 but 2"),
        (lambda: data.sequences_from_arrays(_GOOD, num_flows=0), "num_flows must be an integer ≥ 1"),
        (lambda: data.sequences_from_arrays([_GOOD[0], _GOOD[1, :3]], num_flows=2), "not one numeric array"),
        (lambda: data.register_sequences("mnist", _GOOD, num_flows=2), "cannot register sequences as 'mnist'"),
        (lambda: data.dataset_info("never-registered"), "register them again"),
    ],
)
def test_arrays_from_python_are_checked_with_a_message_naming_the_fix(call, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        call()


def test_files_and_registered_sequences_refuse_what_they_cannot_serve(tmp_path):
    np.save(tmp_path / "frames.npy", _GOOD)
    with pytest.raises(data.DataError, match="come as an .npz file"):
        data.load_sequences(tmp_path / "frames.npy")
    np.savez(tmp_path / "no-frames.npz", images=_GOOD)
    with pytest.raises(data.DataError, match="has no array 'frames' \\(it holds images\\)"):
        data.load_sequences(tmp_path / "no-frames.npz")
    data.register_sequences("own-checks", _GOOD, num_flows=2)
    with pytest.raises(ValueError, match="its k are its labels"):
        data.sequence_dataset("own-checks", k=0)
    with pytest.raises(ValueError, match="num_frames must be ≤ the 9 frames"):
        data.sequence_dataset("own-checks", num_frames=10)
    assert data.sequence_dataset("own-checks", num_frames=4)[0]["frames"].shape == (4, 3, 28, 28)
    with pytest.raises(runs.RunError, match="--data-dir is for the built-in datasets"):
        runs.resolve("quick", method="ffvae-weak", dataset="own-checks", data_dir=tmp_path)
    with pytest.raises(ValueError, match="is a built-in dataset"):
        data.sequence_arrays("mnist")
