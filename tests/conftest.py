import atexit
import gc
import os
import shutil
import tempfile

# One persistent compilation cache per xdist worker, set in this process only (jax.config below).
# JAX itself writes a cache entry in place (`Path.write_bytes`, not atomically), and a half-written
# entry once segfaulted the worker that deserialised it (compilation_cache.get_executable_and_time):
# so not one folder for all workers. A fresh root per session: no run starts warm from an earlier one.
# Every program is cached, however quick to compile (JAX's default keeps only those over 1 s):
# building a model eagerly compiles one small program per weight shape, and each test builds again.
# Training steps hold no host callback (flows.integrate), so they are cached too.
_CACHE_ROOT = tempfile.mkdtemp(prefix="eqx_ffvae-test-jax-cache-")
atexit.register(shutil.rmtree, _CACHE_ROOT, ignore_errors=True)
_CACHE_DIR = os.path.join(_CACHE_ROOT, os.environ.get("PYTEST_XDIST_WORKER", "main"))
os.makedirs(_CACHE_DIR, exist_ok=True)
for _name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    os.environ.pop(_name, None)  # subprocesses must not inherit this worker's cache (above)
# Runs that tests start as subprocesses (`train/run.py`) use the package's own cache
# (`compile_cache.enable`, atomic writes, so they may share it, even when tests kill them): one folder
# of this session's root for all of them, never the user's ~/.cache.
os.environ["EQX_FFVAE_COMPILE_CACHE"] = os.path.join(_CACHE_ROOT, "runs")
# Tests compile far more than they run: LLVM at -O0 compiles the suite's programs ~25% faster (XLA's
# graph optimisations, which decide what is computed, are unchanged). Runs the tests start inherit it.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax
import jax.random as jr
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

import eqx_ffvae.training

# Tests share compiled programs across their many tiny runs; clearing JAX's caches before every
# step's compile (what a real run does, for its peak memory) made the default set 37% slower.
eqx_ffvae.training.CLEAR_CACHES_BEFORE_COMPILE = False


@pytest.fixture(autouse=True, scope="module")
def _fresh_compiled_programs():
    """Each test module starts with no compiled programs held: an xdist worker runs ~100 tests, and
    what they compiled otherwise stays in its memory for the whole session (CI workers late in the
    suite died inside XLA compiles)."""
    yield
    jax.clear_caches()
    gc.collect()


def nan_frames(batch: dict) -> dict:
    """Fault injection: a training batch of the same sequences (k) whose MNIST frames are all NaN, for a
    run with `frames_on="host"` (its compiled step takes float frames; compact digits cannot be NaN)."""
    import numpy as np

    frames = np.full((len(batch["k"]), 9, 3, 28, 28), np.nan, np.float32)
    return {"frames": frames, "k": batch["k"], "index": batch["index"]}


TINY_ARGS = ["--latent-dim", "4", "--width", "4", "--potential-width", "8", "--batch-size", "8"]
"""The tiny model every command-line test trains: one compiled step, served from the worker's cache."""
TINY_EVAL = ["--eval-sequences", "8", "--ll-samples", "2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The default (`quick`) preset at `TINY_ARGS`, trained 4 steps (checkpoints at 2 and 4), evaluated
    (`TINY_EVAL`) and drawn by the command line: one run per xdist worker that the tests read. A test
    that changes a run works on a copy (`shutil.copytree`)."""
    from eqx_ffvae import cli

    out = tmp_path_factory.mktemp("tiny") / "run"
    assert cli.main(["--steps", "4", "--checkpoint-every", "2", *TINY_ARGS, *TINY_EVAL, "--out", str(out)]) == 0
    return out


@pytest.fixture
def getkey():
    """Fresh keys on every call, seeded per test so failures reproduce."""
    state = {"key": jr.key(0)}

    def _getkey():
        state["key"], sub = jr.split(state["key"])
        return sub

    return _getkey


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
