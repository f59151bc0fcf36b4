import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

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
