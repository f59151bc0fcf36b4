import atexit
import os
import shutil
import tempfile

# One persistent compilation cache per session, a folder of it per xdist worker, shared with the
# training runs that worker starts as subprocesses (they inherit the variable): runs of one
# configuration (resume, README commands) compile once. Not one folder for all workers: JAX writes a
# cache entry in place (not atomically), so a worker reading an entry another worker is still writing
# deserialises a truncated executable and aborts (a worker crash in CI). A fresh root per session, so
# no run starts with a warm cache.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="eqx_ffvae-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
if "PYTEST_XDIST_WORKER" in os.environ and "EQX_FFVAE_TEST_WORKER_CACHE" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        os.environ["JAX_COMPILATION_CACHE_DIR"], os.environ["PYTEST_XDIST_WORKER"]
    )
    os.makedirs(os.environ["JAX_COMPILATION_CACHE_DIR"], exist_ok=True)
    os.environ["EQX_FFVAE_TEST_WORKER_CACHE"] = "1"
# Every program, however quick to compile (JAX's default keeps only those over 1 s): building a model
# eagerly compiles one small program per weight shape, ~6.5 s for the quick preset's, and each worker
# and each training subprocess builds the same models again; from the cache that is ~1 s.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Training steps are not cached: Equinox lowers Diffrax's runtime checks to a host callback, and JAX
# does not cache a program with one. (With EQX_ON_ERROR=nan they were cached, and jaxlib's
# `executable.serialize()` of a training step segfaulted a worker twice in CI, in
# compilation_cache.put_executable_and_time under compile_step.)

import jax
import jax.random as jr
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


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
