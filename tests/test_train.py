"""train/run.py end to end: devices, exact resume, signals, NaN stop, presets, eval, errors."""

import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TINY_ARGS, nan_frames
from PIL import Image

from eqx_ffvae import cli, runs
from eqx_ffvae.checkpoint import Checkpointer
from eqx_ffvae.layout import default_slice_size
from eqx_ffvae.runs import RunError
from eqx_ffvae.runs.directory import _check_same_run

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "train" / "run.py"
TINY = TINY_ARGS


@pytest.fixture(scope="module")
def run_module():
    """The CLI that train/run.py runs, in this process."""
    return cli


def _env(devices=1, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EQX_FFVAE_") or k == "EQX_FFVAE_COMPILE_CACHE"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _run(args, devices=1, timeout=300, **extra):
    return subprocess.run(
        [sys.executable, str(RUN), *args], env=_env(devices, **extra), capture_output=True, text=True, timeout=timeout
    )


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_leaves(run_dir):
    spec = runs.read_spec(run_dir)
    model, _, opt_state = runs.build(spec)
    ckpt = Checkpointer(run_dir / "checkpoints")
    (model, opt_state), key, record, step = ckpt.restore((model, opt_state))
    ckpt.close()
    import equinox as eqx
    import jax

    return step, [np.asarray(x) for x in jax.tree.leaves(eqx.filter((model, opt_state), eqx.is_array))], record


def test_checkpoint_of_another_shape_is_refused_by_name(tmp_path):
    import jax.numpy as jnp
    import jax.random as jr

    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(3, {"w": jnp.ones((2, 5))}, jr.key(0), {})
    with pytest.raises(ValueError, match=r"ck/3 does not fit this model: .*\(2, 5\).*\(5, 2\).*--fresh"):
        ckpt.restore({"w": jnp.ones((5, 2))})
    ckpt.close()


def test_a_background_save_survives_donation_and_reports_its_failure(tmp_path, monkeypatch):
    import jax.numpy as jnp
    import jax.random as jr

    from eqx_ffvae import checkpoint

    ckpt = Checkpointer(tmp_path / "ck", background=True)
    state = {"w": jnp.arange(12.0).reshape(3, 4)}
    ckpt.save(1, state, jr.key(5), {"n": 1})
    # As the next training step does: donate the saved arrays (their buffers may hold -1 from here on).
    overwritten = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 - 1, s), donate_argnums=0)(state)
    jax.block_until_ready(overwritten)
    ckpt.wait()
    assert (tmp_path / "ck" / "1" / "files.json").is_file()
    restored, key, record, step = ckpt.restore({"w": jnp.zeros((3, 4))})
    np.testing.assert_array_equal(restored["w"], np.arange(12.0).reshape(3, 4))
    assert (step, record) == (1, {"n": 1}) and jr.key_data(key).tolist() == jr.key_data(jr.key(5)).tolist()

    def broken(step_dir):
        raise OSError(f"disk full while hashing {step_dir.name}")

    monkeypatch.setattr(checkpoint, "_file_digests", broken)
    ckpt.save(2, {"w": jnp.ones((3, 4))}, jr.key(0), {})
    with pytest.raises(OSError, match="disk full while hashing 2"):
        ckpt.wait()
    ckpt.wait()  # raised once, then clear
    ckpt.close()


PARALLEL_ARGS = ["--steps", "5", "--skip-eval", *TINY]


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    """One process on one device: the reference the multi-device and multi-process runs must match."""
    out = tmp_path_factory.mktemp("single") / "run"
    res = _run([*PARALLEL_ARGS, "--out", str(out)], devices=1)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_losses(tmp_path, single_device_run):
    four = _run([*PARALLEL_ARGS, "--out", str(tmp_path / "d4")], devices=4)
    assert four.returncode == 0, four.stderr[-2000:]
    a, b = _losses(single_device_run), _losses(tmp_path / "d4")
    assert len(a) == len(b) == 5
    np.testing.assert_allclose(a, b, rtol=1e-4)


def _start(args, **extra):
    return subprocess.Popen(
        [sys.executable, str(RUN), *args], env=_env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_checkpoint(run_dir, proc, timeout=240):
    start = time.time()
    while time.time() - start < timeout:
        ckpts = run_dir / "checkpoints"
        if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(tmp_path):
    args = ["--steps", "50", "--checkpoint-every", "5", "--skip-eval", *TINY]
    straight = _run([*args, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = _start([*args, "--out", str(tmp_path / "killed")])
    _wait_for_checkpoint(tmp_path / "killed", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = max(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.isdigit())
    assert interrupted_at < 50
    resumed = _run([*args, "--out", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from step {interrupted_at}" in resumed.stdout
    step_a, leaves_a, _ = _checkpoint_leaves(tmp_path / "straight")
    step_b, leaves_b, _ = _checkpoint_leaves(tmp_path / "killed")
    assert step_a == step_b == 50
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))
    assert [r for r in _losses(tmp_path / "killed")] == _losses(tmp_path / "straight")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_prints_the_command_that_resumes(tmp_path):
    """SIGINT (Ctrl-C) with no --out (the default has a timestamp, so "the same command" would start
    over): the message names the command with the run directory made explicit, and that command
    resumes the run. (SIGTERM takes the same path; it is sent in the tests of two processes and of
    evaluation.)"""
    args = ["--steps", "40", "--checkpoint-every", "5", "--skip-eval", *TINY]
    proc = subprocess.Popen(
        [sys.executable, str(RUN), *args],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.time()
    while not list(tmp_path.glob("runs/*/checkpoints/[0-9]*")) and proc.poll() is None and time.time() - start < 240:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    step, leaves, record = _checkpoint_leaves(run_dir)
    assert 0 < step < 40 and leaves and record["step"] == step
    said = re.search(r"SIGINT: saved step (\d+) in .*; to continue: python train/run\.py (.*)", out + err)
    assert said and int(said.group(1)) == step, (out + err)[-2000:]
    command = shlex.split(said.group(2))
    assert command[-2:] == ["--out", str(Path("runs") / run_dir.name)]
    resumed = subprocess.run(
        [sys.executable, str(RUN), *command], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from step {step}" in resumed.stdout and _checkpoint_leaves(run_dir)[0] == 40


def test_the_resume_command_drops_fresh_and_names_the_out():
    assert cli.resume_command(["--fresh", "--steps", "5"], Path("runs/x")).endswith("--steps 5 --out runs/x")
    assert cli.resume_command(["--out", "my run"], Path("my run")).endswith("--out 'my run'")


def _poison_batch(index):
    """Fault injection from the test side: the data iterator's batch `index` (0-based) becomes NaN
    frames (float frames in place of the compact uint8 digits: the step takes either)."""

    def wrap(batches):
        for i, batch in enumerate(batches):
            yield nan_frames(batch) if i == index else batch

    return wrap


@pytest.mark.parametrize("bad_step", [3, 4])
def test_injected_nan_stops_with_message(tmp_path, bad_step):
    """Steps run ahead of the host (`STEPS_IN_FLIGHT`), so a NaN is read back at most that many steps
    late; it still names its own step, and a checkpoint due at that step (4) is never written."""
    spec = cli.spec_from(
        cli.Train(steps=6, checkpoint_every=2, latent_dim=4, width=4, potential_width=8, batch_size=8, frames_on="host")
    )
    run = runs.TrainingRun(spec, tmp_path / "nan", wrap_batches=_poison_batch(bad_step - 1))
    with pytest.raises(RunError, match=rf"non-finite loss at step {bad_step} .*last good checkpoint is step 2") as err:
        for _ in run:
            pass
    assert "\n" not in str(err.value)
    assert bad_step <= run.step <= bad_step + runs.STEPS_IN_FLIGHT
    assert max(int(p.name) for p in (tmp_path / "nan" / "checkpoints").iterdir() if p.name.isdigit()) == 2
    logged = [json.loads(line)["step"] for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, bad_step))


def test_the_loop_builds_the_next_batch_while_the_step_runs(tmp_path):
    """The loop dispatches a step and returns to the host at once: when it asks for the next batch, the
    model of the step just dispatched is still being computed. (An `eqx.filter_jit` call waits for its
    step to finish, so a loop calling one would find every model ready.)"""
    import equinox as eqx

    spec = cli.spec_from(
        cli.Train(steps=8, checkpoint_every=100, latent_dim=4, width=4, potential_width=8, batch_size=8)
    )
    readiness = []

    def watch(batches):
        for i, batch in enumerate(batches):
            if i >= 2:  # a step has been dispatched before this batch was asked for
                readiness.append(jax.tree.leaves(eqx.filter(run.model, eqx.is_array))[-1].is_ready())
            yield batch

    run = runs.TrainingRun(spec, tmp_path / "async", wrap_batches=watch)
    for _ in run:
        pass
    assert len(readiness) == 6 and not all(readiness), readiness


# ---- in-process runs: presets on fixture data, eval, expected errors -----------------------------


def _png_grid(folder, sizes, px=128):
    folder.mkdir(parents=True)
    for idx in range(math.prod(sizes)):
        Image.fromarray(np.full((px, px, 3), idx % 255, np.uint8)).save(folder / f"{idx:05d}.png")
    return folder


def _shapes_h5(folder, sizes):
    import h5py

    folder.mkdir(parents=True)
    n = math.prod(sizes)
    with h5py.File(folder / "3dshapes.h5", "w") as f:
        f["images"] = np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
        f["labels"] = np.stack(np.unravel_index(np.arange(n), sizes), axis=-1).astype(np.float64)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mnist", "mnist-weak", "shapes3d", "shapes3d-medium", "falcor3d", "isaac3d"])
def test_each_preset_takes_two_steps(run_module, tmp_path, preset):
    extra = []
    if preset == "shapes3d-medium":  # no --data-dir: the procedural renderer
        extra = ["--num-frames", "3"]
    if preset == "shapes3d":
        extra = [
            "--data-dir",
            str(_shapes_h5(tmp_path / "shapes", (3, 3, 3, 3, 2, 3))),
            "--factor-sizes",
            "3",
            "3",
            "3",
            "3",
            "2",
            "3",
            "--num-frames",
            "3",
        ]
    if preset == "falcor3d":
        extra = [
            "--data-dir",
            str(_png_grid(tmp_path / "falcor", (2,) * 7)),
            "--factor-sizes",
            *["2"] * 7,
            "--num-frames",
            "2",
        ]
    if preset == "isaac3d":
        extra = [
            "--data-dir",
            str(_png_grid(tmp_path / "isaac", (1,) + (2,) * 8)),
            "--factor-sizes",
            "1",
            *["2"] * 8,
            "--num-frames",
            "2",
        ]
    rc = run_module.main(
        [
            "--preset",
            preset,
            "--steps",
            "2",
            "--skip-eval",
            "--workers",
            "0",
            *TINY,
            *extra,
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    assert len(_losses(tmp_path / "run")) == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["preset"] == preset and config["steps"] == 2
    expected = {"mnist-weak": "mnist", "shapes3d-medium": "procedural-shapes"}.get(preset, preset)
    assert config["dataset"] == expected


@pytest.fixture
def trained_run(tiny_run, tmp_path):
    """A copy of the session's tiny run (conftest.py: `quick`, 4 steps, evaluated) that a test may change."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_run_directory_holds_everything(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "eval.json", "figures"} <= names
    result = json.loads((trained_run / "eval.json").read_text())
    for name in ("scale", "rotation", "hue"):
        entry = result["transformations"][name]
        for key in (
            "equivariance_error",
            "equivariance_error_identity",
            "equivariance_error_linear",
            "equivariance_error_extrapolation",
            "log_likelihood",
            "log_likelihood_per_frame",
            "effective_sample_size",
            "num_sequences",
        ):
            assert key in entry
        assert len(entry["log_likelihood_per_frame"]) == 9
        assert 1 <= entry["effective_sample_size"] <= 2
    assert set(result["equivariance_error_composition"]) == {"scale+rotation", "scale+hue", "rotation+hue"}
    for name in ("scale", "rotation", "hue"):
        flow = result["flows"][name]
        assert flow["min_eigenvalue"] > 0 and flow["logdet_gap"] >= 0
    figures = {p.name for p in (trained_run / "figures").iterdir()}
    assert {"flow_scale.png", "flow_rotation.gif", "compose_scale+rotation.png", "loss.png"} <= figures
    assert any((trained_run / "tensorboard").iterdir())


def test_tensorboard_shows_training_scalars_eval_metrics_and_figures(trained_run):
    """Read back with TensorBoard's own reader: what `tensorboard --logdir` would show."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/sequences_per_s"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    result = json.loads((trained_run / "eval.json").read_text())
    scale = events.Scalars("eval/scale/equivariance_error")
    assert [e.step for e in scale] == [4]
    assert scale[0].value == pytest.approx(result["transformations"]["scale"]["equivariance_error"], rel=1e-6)
    assert "eval/composition/scale_rotation/equivariance_error" in tags["scalars"]
    assert "eval/flows/hue/min_eigenvalue" in tags["scalars"]
    from eqx_ffvae.tensorboard import eval_scalars, tag

    assert set(eval_scalars(result)) <= set(tags["scalars"])
    pngs = {p.stem for p in (trained_run / "figures").glob("*.png")}
    assert {tag(f"figures/{name}") for name in pngs} <= set(tags["images"])
    image = events.Images("figures/flow_scale")[0]
    assert image.step == 4 and image.width > 0 and image.height > 0


def test_config_records_what_produced_the_run(trained_run):
    import jax

    record = json.loads((trained_run / "config.json").read_text())["provenance"]
    assert len(record) == 1 and record[0]["start_step"] == 0
    assert record[0]["packages"]["jax"] == jax.__version__
    assert record[0]["devices"] == [str(d) for d in jax.devices()]
    assert record[0]["git_commit"] is None or len(record[0]["git_commit"]) == 40
    assert f"× {os.cpu_count()}" in record[0]["cpu"] and record[0]["xla_flags"] == os.environ.get("XLA_FLAGS")


@pytest.mark.slow
def test_eval_rewrites_the_same_eval_json(run_module, trained_run):
    before = (trained_run / "eval.json").read_text()
    (trained_run / "eval.json").unlink()
    assert run_module.main(["eval", "--run", str(trained_run)]) == 0
    assert (trained_run / "eval.json").read_text() == before


def test_sample_draws_every_flow(run_module, trained_run):
    assert run_module.main(["sample", "--run", str(trained_run), "--num", "2"]) == 0
    assert (trained_run / "figures" / "samples_hue.png").exists()


def test_help_explains_flags():
    res = _run(["--help"])
    assert res.returncode == 0
    for flag in (
        "--preset",
        "--model",
        "--data-dir",
        "--steps",
        "--batch-size",
        "--seed",
        "--out",
        "--checkpoint-every",
        "--fresh",
        "--matmul-precision",
    ):
        assert flag in res.stdout
    assert "factorvae" in res.stdout and "ffvae-weak" in res.stdout
    res = _run(["compare", "--help"])
    assert res.returncode == 0
    for flag in ("--preset", "--seeds", "--models", "--steps", "--out"):
        assert flag in res.stdout


def _one_line_error(run_module, capsys, args, match):
    rc = run_module.main(args)
    err = capsys.readouterr().err
    assert rc != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    return lines[0]


def test_expected_errors_are_one_line(run_module, capsys, tmp_path, trained_run):
    with pytest.raises(SystemExit) as exit_:  # tyro names the choices
        run_module.main(["--preset", "cifar"])
    assert exit_.value.code == 2 and "quick" in capsys.readouterr().err
    _one_line_error(run_module, capsys, ["--steps", "0"], "--steps must be an integer ≥ 1, got 0")
    _one_line_error(run_module, capsys, ["--preset", "falcor3d"], "needs --data-dir")
    _one_line_error(run_module, capsys, ["--data-dir", str(tmp_path / "absent")], "absent does not exist")
    _one_line_error(run_module, capsys, ["--preset", "falcor3d", "--data-dir", str(tmp_path)], "holds no .png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(run_module, capsys, ["--steps", "1", *TINY, "--out", str(blocker / "run")], "cannot write to --out")
    _one_line_error(
        run_module,
        capsys,
        ["--steps", "4", *TINY[:-2], "--batch-size", "8", "--width", "6", "--out", str(trained_run)],
        "another configuration",
    )
    _one_line_error(run_module, capsys, ["eval", "--run", str(tmp_path)], "not a run directory")


def test_the_default_slice_size_follows_the_backend(monkeypatch):
    """The preset's slice on a CPU, the whole batch on an accelerator; --slice-size always wins."""
    assert default_slice_size(128, "cpu") == 16
    assert default_slice_size(128, "gpu") == 128 and default_slice_size(64, "tpu") == 64
    assert runs.resolve("quick").slice_size == 16  # this machine is a CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert runs.resolve("quick").slice_size == 32 and runs.resolve("quick", batch_size=8).slice_size == 8
    assert runs.resolve("quick", slice_size=4).slice_size == 4
    # a spec built by hand leaves it to the backend, as make_step does (never the CPU's 16 on a GPU)
    assert {f.name: f.default for f in dataclasses.fields(runs.RunSpec)}["slice_size"] is None


def test_a_run_resumes_with_another_slice_size_not_another_width(trained_run):
    spec = cli.spec_from(cli.Train(steps=3, latent_dim=4, width=4, potential_width=8, batch_size=8))
    saved = runs.read_spec(trained_run)
    assert spec.slice_size == 16  # layout.CPU_SLICE_SIZE, the default on a CPU
    _check_same_run(dataclasses.replace(spec, slice_size=2), saved, trained_run)  # layout only
    wider = dataclasses.replace(spec, model=dataclasses.replace(spec.model, width=6))
    with pytest.raises(RunError, match=r"model fields \['width'\] differ"):
        _check_same_run(wider, saved, trained_run)


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path, single_device_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        _start(
            [
                *PARALLEL_ARGS,
                "--out",
                str(tmp_path / "multi"),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ]
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    multi = _losses(tmp_path / "multi")
    assert len(multi) == 5
    np.testing.assert_allclose(multi, _losses(single_device_run), rtol=1e-4)


@pytest.mark.slow
def test_a_second_run_loads_its_training_step_from_the_compilation_cache(tmp_path):
    """The persistent cache is on by default: the first run stores the step (whole entries only, no
    partial file left), a second run loads it, and --no-compile-cache neither reads nor writes."""
    cache = tmp_path / "cache"
    args = ["--steps", "2", "--skip-eval", *TINY]
    first = _run([*args, "--out", str(tmp_path / "a")], EQX_FFVAE_COMPILE_CACHE=str(cache))
    second = _run([*args, "--out", str(tmp_path / "b")], EQX_FFVAE_COMPILE_CACHE=str(cache))
    for proc in (first, second):
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "traced the training step" in first.stdout and ", compiled in" in first.stdout
    assert "loaded from the compilation cache" in second.stdout
    assert any(cache.iterdir()) and not list(cache.glob(".*partial"))
    off = tmp_path / "off"
    third = _run([*args, "--no-compile-cache", "--out", str(tmp_path / "c")], EQX_FFVAE_COMPILE_CACHE=str(off))
    assert third.returncode == 0, third.stderr[-2000:]
    assert ", compiled in" in third.stdout and "loaded from the compilation cache" not in third.stdout
    assert not off.exists()


def test_frames_made_on_the_device_train_like_frames_made_on_the_host(tmp_path):
    """--frames-on device: the host ships one uint8 digit and k per sequence, the step makes the
    frames; the first losses equal those of host-made frames to float32 rounding."""
    kwargs = dict(steps=3, checkpoint_every=3, latent_dim=4, width=4, potential_width=8, batch_size=8)
    shipped = []

    def record(batches):
        for batch in batches:
            shipped.append({name: np.asarray(v) for name, v in batch.items()})
            yield batch

    losses = {}
    for where in ("host", "device"):
        spec = cli.spec_from(cli.Train(**kwargs, frames_on=where))
        run = runs.TrainingRun(spec, tmp_path / where, wrap_batches=record if where == "device" else None)
        losses[where] = [event.terms["loss"] for event in run if isinstance(event, runs.StepRecord)]
    assert shipped and all("digits" in b and "frames" not in b for b in shipped)
    per_sequence = max(sum(v.nbytes for n, v in b.items() if n in runs.STEP_INPUTS) for b in shipped) / 8
    assert per_sequence <= 1024
    np.testing.assert_allclose(losses["device"], losses["host"], rtol=1e-5)
    with pytest.raises(RunError, match="--frames-on"):
        runs.resolve(frames_on="gpu")
