import os
import tempfile

# One persistent compilation cache for the session and the training runs it starts as
# subprocesses: runs of one configuration (resume, README commands) compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "eqx_ffvae-test-jax-cache"))
# JAX does not cache a program with host callbacks, and Equinox lowers Diffrax's runtime checks (e.g.
# "saveat.ts must be increasing", which our fixed grids always satisfy) to one; as NaNs instead they
# leave every training step cacheable. Tests still fail on NaNs: every run checks its losses.
os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax
import jax.random as jr
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


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
