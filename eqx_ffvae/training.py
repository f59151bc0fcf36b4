"""The optimiser and one jitted training step (loss, gradients and the optax update together),
data-parallel over a ("batch",) mesh: batch sharded, model replicated. No process-level side effects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array

from .interfaces import AbstractAdversarialModel, AbstractSequenceModel
from .layout import Layout, default_slice_size

Batch = dict[str, Array]
MatmulPrecision = Literal["float32", "tensorfloat32", "bfloat16"]
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16")


def make_optimizer(learning_rate: float, *, clip_norm: float | None = 100.0) -> optax.GradientTransformation:
    """Adam (the paper's optimiser), with global-norm clipping as a guard against rare spikes."""
    adam = optax.adam(learning_rate)
    return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)


def _is_adversarial(model: Any) -> bool:
    return isinstance(model, AbstractAdversarialModel)


def _without_discriminator(tree: Any) -> Any:
    return eqx.tree_at(lambda m: m.discriminator, tree, None) if _is_adversarial(tree) else tree


def init_opt_state(model: Any, optimizer: optax.GradientTransformation) -> Any:
    """Optimiser state for `model`; an adversarial model (FactorVAE) gets `(main, discriminator)`
    states, the discriminator's from the model's own `discriminator_optimizer()`."""
    params = eqx.filter(model, eqx.is_inexact_array)
    if not _is_adversarial(model):
        return optimizer.init(params)
    return optimizer.init(_without_discriminator(params)), model.discriminator_optimizer().init(params.discriminator)


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D ("batch",) mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("batch",))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> Batch:
    """Put this process's rows of the global batch on the mesh, split along the batch axis."""
    sharding = NamedSharding(mesh, P("batch"))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf copied to every device of the mesh (the model and optimiser state)."""
    return eqx.filter_shard(tree, NamedSharding(mesh, P()))


def make_step(
    optimizer: optax.GradientTransformation,
    *,
    slice_size: int | None = None,
    mesh: Mesh | None = None,
    matmul_precision: MatmulPrecision = "float32",
    make_frames: Callable[[Batch], Array] | None = None,
) -> Callable:
    """`step(model, opt_state, batch, key) -> (model, opt_state, loss, terms)`, one JIT region.

    `batch`: {"frames": (B, T+1, C, H, W), "k": (B,)}, and "step": (B,) (every row the training step,
    `with_step`) for a model whose objective has a schedule (the group-supervised FFVAE). The loss is the model's `batch_loss`, laid out by
    `layout.Layout(slice_size)` (memory and speed only: the numbers do not depend on it); by default
    `layout.default_slice_size` of the batch and the backend.

    With a mesh, the batch is constrained to be split over ("batch",) and the model replicated, so
    XLA inserts the gradient all-reduce; buffers of the old model and optimiser state are donated.
    An `AbstractAdversarialModel` (FactorVAE) is updated in two alternating phases inside the step:
    the model by `optimizer` with the discriminator fixed, then the discriminator by its own
    optimiser on latents of the updated encoder.

    `matmul_precision` sets `jax.default_matmul_precision` for the step's matmuls and convolutions:
    "float32" (default, exact), or for GPUs/TPUs "tensorfloat32" or "bfloat16" (faster, fewer
    mantissa bits; CPUs compute float32 either way).

    `make_frames(batch)`: the float32 frames of a batch, made inside the step (e.g. `data.device.frames`
    from compact uint8 batches); by default the batch's "frames" as they are.
    """
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {matmul_precision!r}")
    if slice_size is not None:
        Layout(slice_size)  # a bad size is an error here, not at the first step

    def loss_fn(model: AbstractSequenceModel, batch: Batch, key):
        step = batch["step"][0] if "step" in batch else None
        size = default_slice_size(batch["k"].shape[0]) if slice_size is None else slice_size
        return model.batch_loss(batch["frames"], batch["k"], key=key, step=step, layout=Layout(size))

    def _alternating_update(model, opt_state, batch, key):
        main_state, disc_state = opt_state
        model_key, disc_key = jr.split(key)
        (loss, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, batch, model_key)
        params = _without_discriminator(eqx.filter(model, eqx.is_inexact_array))
        updates, main_state = optimizer.update(_without_discriminator(grads), main_state, params)
        model = eqx.apply_updates(model, updates)
        disc_opt = model.discriminator_optimizer()

        def disc_loss(disc):
            return eqx.tree_at(lambda m: m.discriminator, model, disc).discriminator_loss(batch["frames"], key=disc_key)

        d_loss, d_grads = eqx.filter_value_and_grad(disc_loss)(model.discriminator)
        d_updates, disc_state = disc_opt.update(
            d_grads, disc_state, eqx.filter(model.discriminator, eqx.is_inexact_array)
        )
        model = eqx.tree_at(
            lambda m: m.discriminator,
            model,
            eqx.apply_updates(model.discriminator, d_updates),
        )
        return model, (main_state, disc_state), loss, {**terms, "discriminator": d_loss}

    @eqx.filter_jit(donate="all")
    def step(model, opt_state, batch, key):
        with jax.default_matmul_precision(matmul_precision):
            return _step(model, opt_state, batch, key)

    def _step(model, opt_state, batch, key):
        if mesh is not None:
            batch = eqx.filter_shard(batch, NamedSharding(mesh, P("batch")))
            model, opt_state = replicate((model, opt_state), mesh)
        if make_frames is not None:
            kept = {name: v for name, v in batch.items() if name not in ("digits", "values")}
            batch = {**kept, "frames": make_frames(batch)}
        if _is_adversarial(model):
            model, opt_state, loss, terms = _alternating_update(model, opt_state, batch, key)
        else:
            (loss, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, batch, key)
            updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
            model = eqx.apply_updates(model, updates)
        if mesh is not None:
            model, opt_state = replicate((model, opt_state), mesh)
        return model, opt_state, loss, terms

    return step


def with_step(batch: dict[str, Any], step: int) -> dict[str, Any]:
    """The batch with its "step" row added (the training step number, once per sequence)."""
    return {**batch, "step": np.full(np.shape(batch["k"]), step, np.int32)}


def release_free_memory() -> bool:
    """Give the C allocator's free pages back to the OS (glibc's `malloc_trim`); False where unavailable.

    Building a model and compiling a large step free hundreds of MB of scratch that glibc keeps
    mapped; what is allocated next lands on top, so without this a process's peak RSS counts both.
    """
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    return bool(trim(0))


CLEAR_CACHES_BEFORE_COMPILE = True
"""Whether `trace_and_compile` lets go of JAX's in-memory caches first (memory; never the numbers).
A process that compiles many small runs and wants their programs kept, as the test suite does
(tests/conftest.py), sets it False."""


def compile_step(step: Callable, *args: Any) -> tuple[Any, float]:
    """Compile `step` for these arguments without running it. Returns the compiled step (later calls
    of `step` with like arguments reuse it too) and the seconds tracing, lowering and compilation took
    (`trace_and_compile` gives the parts)."""
    compiled, trace_s, compile_s = trace_and_compile(step, *args)
    return compiled, trace_s + compile_s


def trace_and_compile(step: Callable, *args: Any) -> tuple[Any, float, float]:
    """`compile_step` with its two costs apart: (compiled, seconds tracing and lowering the Python
    function, seconds XLA took, or loading it from the persistent compilation cache).

    XLA warns that the batch's donated buffers cannot be reused (nothing of that shape is returned);
    that warning is silenced here, for this compilation only. Before tracing, JAX's in-memory caches
    are cleared (`jax.clear_caches`: the programs that built the model, its optimiser state and the
    batch, ~90 MB of executables at config (c) of benchmarks/step.py, which a later call simply
    compiles or loads again), and the allocator's free pages go back to the OS before the compilation
    (the model's construction leaves its scratch) and after it (XLA's), so none of them adds to the
    compilation's peak or to the steps' (`release_free_memory`; docs/performance.md).
    """
    if CLEAR_CACHES_BEFORE_COMPILE:
        jax.clear_caches()
        gc.collect()
    release_free_memory()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        lowered = step.lower(*args)
        traced = time.perf_counter()
        compiled = lowered.compile()
    done = time.perf_counter()
    release_free_memory()
    return compiled, traced - start, done - traced


class FlatStep:
    """`step` (from `make_step`) compiled for one structure of (model, opt_state), and called on that
    pair's flat array leaves: `leaves, loss, terms = flat(leaves, batch, key)`.

    Calling an `eqx.filter_jit`, or what its `lower(...).compile()` gives, partitions the model and
    optimiser state into arrays and the rest and checks the rest against the compiled one, every call:
    on the host, several milliseconds of Python per step for the `quick` model, which on a 2-core CPU
    the step's own threads wait for. Here that is done once: the loop carries the leaves, and calling
    is jax's own dispatch of a compiled program. The leaves and the batch are donated, as by
    `make_step`; `state(leaves)` rebuilds (model, opt_state), e.g. to save them.

    `trace_s` and `compile_s` are `trace_and_compile`'s two costs of this compilation.
    """

    def __init__(self, step: Callable, model: Any, opt_state: Any, batch: Batch, key: Array):
        dynamic, self._static = eqx.partition((model, opt_state), eqx.is_array)
        leaves, self._treedef = jax.tree.flatten(dynamic)

        def flat(leaves, batch, key):
            model, opt_state, loss, terms = step(*self.state(leaves), batch, key)
            out_dynamic, out_static = eqx.partition((model, opt_state), eqx.is_array)
            out_leaves, out_treedef = jax.tree.flatten(out_dynamic)
            if out_treedef != self._treedef or not eqx.tree_equal(out_static, self._static):
                raise ValueError(
                    "the step returned a (model, opt_state) of another structure than it was given; "
                    "FlatStep needs a step that keeps it (as make_step's does)"
                )
            return out_leaves, loss, terms

        self._compiled, self.trace_s, self.compile_s = trace_and_compile(
            jax.jit(flat, donate_argnums=(0, 1)), leaves, batch, key
        )

    def leaves(self, model: Any, opt_state: Any) -> list[Array]:
        """The flat array leaves of (model, opt_state), in the order the compiled step takes them."""
        leaves, treedef = jax.tree.flatten(eqx.filter((model, opt_state), eqx.is_array))
        if treedef != self._treedef:
            raise ValueError("(model, opt_state) has another structure than the one this step was compiled for")
        return leaves

    def state(self, leaves: list[Array]) -> tuple[Any, Any]:
        """(model, opt_state) rebuilt from `leaves`."""
        return eqx.combine(jax.tree.unflatten(self._treedef, leaves), self._static)

    def __call__(
        self, leaves: list[Array], batch: dict[str, Array | np.ndarray], key: Array
    ) -> tuple[list[Array], Array, dict]:
        """One step, dispatched and not waited for: (the new leaves, the loss, the terms). `batch` may
        be the host's numpy arrays, which the compiled step puts on the devices it was compiled for."""
        return self._compiled(leaves, batch, key)
