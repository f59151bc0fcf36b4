"""Run directories that nothing corrupts or wipes, and every bad file or flag caught before work starts.

Each test is one case of the run-directory reliability issue, on a tiny configuration: a lock, a safe
--fresh, checkpoint fallback, tolerant metrics, data-file and flag validation, signals in every phase.
"""

import dataclasses
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ARGS, TINY_EVAL, nan_frames

from eqx_ffvae import cli, runs
from eqx_ffvae.baselines.vae import VAEConfig
from eqx_ffvae.data.mnist import _SPLIT_FILES

ROOT = Path(__file__).resolve().parents[1]
TINY, EVAL = TINY_ARGS, TINY_EVAL


def _one_line_error(capsys, args, match) -> str:
    rc = cli.main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with runs.locked(out):  # another process's run holds it (flock is per open file: this test's own)
        _one_line_error(capsys, ["--steps", "1", *TINY, "--skip-eval", "--out", str(out)], f"pid {os.getpid()}")
    assert not (out / "checkpoints").exists() and not (out / "config.json").exists()


def test_a_lock_left_by_a_dead_process_is_taken(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 999999 on elsewhere")  # no process holds the flock
    assert cli.main(["--steps", "1", *TINY, "--skip-eval", "--out", str(out)]) == 0
    assert _steps(out) == [1]


@pytest.mark.slow
def test_two_simultaneous_processes_one_trains(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [
        sys.executable,
        str(ROOT / "train" / "run.py"),
        "--steps",
        "100000",
        *TINY,
        "--skip-eval",
        "--out",
        str(out),
    ]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        start = time.time()
        while not (out / "metrics.jsonl").exists() and time.time() - start < 240:
            assert first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.1)
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 2
        assert [line for line in second.stderr.splitlines() if line.strip()] == [
            f"error: {out} is in use by pid {first.pid} on {os.uname().nodename}; wait for it to finish or choose "
            "another --out"
        ]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 0


def test_fresh_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "poster.png").write_bytes(b"precious")
    (folder / "figures").mkdir()
    (folder / "figures" / "loss.png").write_bytes(b"also mine")
    _one_line_error(capsys, ["--fresh", "--steps", "1", *TINY, "--out", str(folder)], "not a run directory")
    assert (folder / "poster.png").read_bytes() == b"precious"
    assert (folder / "figures" / "loss.png").read_bytes() == b"also mine"


def test_fresh_deletes_only_what_a_run_wrote(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / "figures" / "poster.png").write_bytes(b"precious")
    (out / "notes.txt").write_text("mine")
    assert cli.main(["--fresh", "--steps", "1", *TINY, "--skip-eval", "--out", str(out)]) == 0
    assert (out / "figures" / "poster.png").read_bytes() == b"precious" and (out / "notes.txt").exists()
    assert not (out / "figures" / "loss.png").exists() and not (out / "eval.json").exists()
    assert _steps(out) == [1]


def test_a_checkpoint_of_another_shape_is_refused_before_anything_is_written(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / "config.json").unlink()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    args = ["--steps", "4", "--checkpoint-every", "2", *TINY, "--skip-eval", "--out", str(out)]
    wider = [a if a != "4" or i != args.index("--width") + 1 else "6" for i, a in enumerate(args)]
    _one_line_error(capsys, wider, "does not fit this model")
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.name != ".lock") == [
        p for p in before if p.name != ".lock"
    ]
    assert cli.main(args) == 0  # the right command still works: nothing to do, nothing rewritten
    assert not (out / "config.json").exists()


def test_a_damaged_newest_checkpoint_falls_back_and_finishes_identically(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--steps", "4", "--checkpoint-every", "2", *TINY, *EVAL, "--out", str(out)]
    assert cli.main([*args[:1], "2", *args[2:]]) == 0  # trained to step 2 only
    assert cli.main(["--steps", "4", "--checkpoint-every", "2", *TINY, "--skip-eval", "--out", str(out)]) == 0
    newest = out / "checkpoints" / "4"
    victim = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    capsys.readouterr()
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "checkpoints/4 cannot be read" in printed and "resuming" in printed and "from step 2" in printed
    assert (out / "damaged-checkpoints").is_dir() and any((out / "damaged-checkpoints").iterdir())
    assert _steps(out) == [1, 2, 3, 4]
    assert json.loads((out / "eval.json").read_text()) == json.loads((tiny_run / "eval.json").read_text())


def test_a_partial_last_metrics_line_is_cut_on_resume(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 12')  # killed mid-write
    assert cli.main(["--steps", "6", "--checkpoint-every", "2", *TINY, "--skip-eval", "--out", str(out)]) == 0
    assert _steps(out) == [1, 2, 3, 4, 5, 6]


def test_a_run_that_never_checkpointed_leaves_no_records(tmp_path):
    spec = cli.spec_from(
        cli.Train(steps=6, checkpoint_every=5, latent_dim=4, width=4, potential_width=8, batch_size=8, frames_on="host")
    )

    def poison(batches):
        for i, batch in enumerate(batches):
            yield nan_frames(batch) if i == 2 else batch

    with pytest.raises(runs.NonFiniteLoss, match="non-finite loss at step 3.*no checkpoint was saved"):
        for _ in runs.TrainingRun(spec, tmp_path / "run", wrap_batches=poison):
            pass
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""


def _mnist_dir(folder: Path, broken: str | None = None, how: str = "truncated") -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for _split, (images, labels) in _SPLIT_FILES.items():
        n = 16
        blobs = {
            images: bytes([0, 0, 8, 3])
            + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
            + rng.integers(0, 255, n * 784, dtype=np.uint8).tobytes(),
            labels: bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + rng.integers(0, 10, n, dtype=np.uint8).tobytes(),
        }
        for name, blob in blobs.items():
            data = gzip.compress(blob)
            if name == broken:
                data = data[: len(data) // 2] if how == "truncated" else b"not gzip at all"
            (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_broken_mnist_test_file_is_named_before_training(tmp_path, capsys, how):
    broken = _SPLIT_FILES["test"][0]
    folder = _mnist_dir(tmp_path / "mnist", broken, how)
    out = tmp_path / "run"
    line = _one_line_error(
        capsys,
        ["--preset", "mnist", "--data-dir", str(folder), "--steps", "1", *TINY, "--workers", "0", "--out", str(out)],
        broken,
    )
    assert "truncated or not gzip" in line
    assert not out.exists()  # checked before the lock, the config, anything


def test_a_garbage_shapes3d_file_is_named(tmp_path, capsys):
    folder = tmp_path / "shapes"
    folder.mkdir()
    (folder / "3dshapes.h5").write_bytes(b"\x00garbage" * 100)
    _one_line_error(
        capsys,
        ["--preset", "shapes3d", "--data-dir", str(folder), "--steps", "1", *TINY],
        "3dshapes.h5 is not a readable HDF5 file",
    )


@pytest.mark.parametrize("preset, loud", [("mnist", True), ("mnist-weak", True), ("quick", False)])
def test_a_full_data_preset_on_the_embedded_subset_says_so(preset, loud):
    notes = []
    runs.resolve(preset, notes=notes)
    said = [n for n in notes if n.startswith("NOTICE") and "embedded" in n and "--data-dir" in n]
    assert len(said) == (1 if loud else 0), notes


def test_a_data_dir_that_is_a_file_is_called_a_file(tmp_path, capsys):
    path = tmp_path / "mnist.gz"
    path.write_bytes(b"x")
    line = _one_line_error(capsys, ["--preset", "mnist", "--data-dir", str(path), "--steps", "1"], "is a file")
    assert "download" not in line


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_a_bad_learning_rate_is_refused_before_anything_is_written(tmp_path, capsys, value):
    out = tmp_path / "run"
    _one_line_error(capsys, [f"--learning-rate={value}", "--steps", "1", *TINY, "--out", str(out)], "--learning-rate")
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--eval-sequences", "0"),
        ("--seed", "-1"),
        ("--ll-samples", "0"),
        ("--checkpoint-every", "0"),
        ("--slice-size", "0"),
        ("--workers", "-1"),
    ],
)
def test_every_numeric_flag_is_checked_by_name(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    _one_line_error(capsys, [f"{flag}={value}", "--steps", "1", *TINY, "--out", str(out)], flag)
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"validation_fraction": 0.95}, "--validation-fraction must be in"),
        ({"factor_sizes": (3, 0)}, "--factor-sizes must all be"),
        ({"matmul_precision": "fp8"}, "--matmul-precision must be one of"),
        ({"model": VAEConfig()}, "'ffvae' needs a FFVAEConfig, got VAEConfig"),
    ],
)
def test_a_spec_with_a_bad_value_is_refused_by_name(change, named):
    with pytest.raises(runs.RunError, match=named):
        dataclasses.replace(runs.resolve(), **change)


def test_an_unknown_method_or_setting_is_named():
    with pytest.raises(runs.RunError, match="--model: unknown model 'ffave'"):
        runs.resolve(method="ffave")
    with pytest.raises(runs.RunError, match="no method has the setting"):
        runs.resolve(latent_dims=4)
    with pytest.raises(runs.RunError, match="unknown preset 'mnist-huge'"):
        runs.resolve("mnist-huge")


def test_a_shapes3d_count_error_names_the_flag(tmp_path, capsys):
    import h5py

    folder = tmp_path / "shapes"
    folder.mkdir()
    with h5py.File(folder / "3dshapes.h5", "w") as f:
        f["images"] = np.zeros((4, 64, 64, 3), np.uint8)
        f["labels"] = np.zeros((4, 6))
    _one_line_error(
        capsys, ["--preset", "shapes3d", "--data-dir", str(folder), "--steps", "1", *TINY], "--factor-sizes"
    )


def test_resuming_with_fewer_steps_trains_nothing_and_rewrites_nothing(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    config = (out / "config.json").read_text()
    capsys.readouterr()
    assert cli.main(["--steps", "2", *TINY, "--skip-eval", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "trained" not in printed.replace("already trained", "")
    assert (out / "config.json").read_text() == config


def test_eval_of_a_directory_without_checkpoints_writes_nothing(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(tiny_run / "config.json", out / "config.json")
    _one_line_error(capsys, ["eval", "--run", str(out)], "has no checkpoint")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


@pytest.mark.slow
def test_sigterm_during_eval_exits_like_training_and_leaves_no_partial_file(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / "eval.json").unlink()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train" / "run.py"), "eval", "--run", str(out)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("loaded"), line + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SIGTERM: stopped" in err and "Traceback" not in err
    assert not (out / "eval.json").exists() and not list(out.glob(".*.tmp-*"))
