"""The optimiser and one jitted training step (loss, gradients and the optax update together),
data-parallel over a ("batch",) mesh: batch sharded, model replicated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

Batch = dict[str, Array]
MatmulPrecision = Literal["float32", "tensorfloat32", "bfloat16"]
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16")


def make_optimizer(learning_rate: float, *, clip_norm: float | None = 100.0) -> optax.GradientTransformation:
    """Adam (the paper's optimiser), with global-norm clipping as a guard against rare spikes."""
    adam = optax.adam(learning_rate)
    return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)


def batch_loss(model: Any, batch: Batch, key: PRNGKeyArray, *, weak: bool = False) -> tuple[Scalar, dict[str, Scalar]]:
    """Mean per-sequence loss over a batch `{"frames": (B, T+1, C, H, W), "k": (B,)}`, one key each.

    `weak`: k is not observed (ignored): an FFVAE that infers k trains its weak objective
    (`weak_batch_loss`), or the authors' group objective (`group_batch_loss`, which reads the step
    number from `batch["step"]`). Otherwise models with a `batch_loss` method (the FFVAE, the
    baselines) compute it themselves, and any other model's `loss` is vmapped.
    """
    frames: Float[Array, "b n c h w"] = batch["frames"]
    keys = jr.split(key, frames.shape[0])
    if weak and model.config.group_supervised:
        return model.group_batch_loss(frames, batch["step"][0], key=key)
    if weak:
        return model.weak_batch_loss(frames, key=key)
    if hasattr(model, "batch_loss"):
        return model.batch_loss(frames, batch["k"], key=key)
    else:
        ks: Int[Array, " b"] = batch["k"]
        losses, terms = jax.vmap(lambda x, k, kk: model.loss(x, k, key=kk))(frames, ks, keys)
    return jnp.mean(losses), jax.tree.map(jnp.mean, terms)


def _has_discriminator(model: Any) -> bool:
    return hasattr(model, "discriminator_loss")


def _without_discriminator(tree: Any) -> Any:
    return eqx.tree_at(lambda m: m.discriminator, tree, None) if _has_discriminator(tree) else tree


def init_opt_state(model: Any, optimizer: optax.GradientTransformation) -> Any:
    """Optimiser state for `model`; an adversarial model (FactorVAE) gets `(main, discriminator)`
    states, the discriminator's from the model's own `discriminator_optimizer()`."""
    params = eqx.filter(model, eqx.is_inexact_array)
    if not _has_discriminator(model):
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
    weak: bool = False,
    mesh: Mesh | None = None,
    matmul_precision: MatmulPrecision = "float32",
) -> Callable:
    """`step(model, opt_state, batch, key) -> (model, opt_state, loss, terms)`, one JIT region.

    With a mesh, the batch is constrained to be split over ("batch",) and the model replicated, so
    XLA inserts the gradient all-reduce; buffers of the old model and optimiser state are donated
    (the batch's too, which XLA cannot reuse: its warning about that is silenced). A model with a
    discriminator (FactorVAE) is updated in two alternating phases inside the step: the model by
    `optimizer` with the discriminator fixed, then the discriminator by its own optimiser on latents
    of the updated encoder.

    `matmul_precision` sets `jax.default_matmul_precision` for the step's matmuls and convolutions:
    "float32" (default, exact), or for GPUs/TPUs "tensorfloat32" or "bfloat16" (faster, fewer
    mantissa bits; CPUs compute float32 either way).
    """
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {matmul_precision!r}")

    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

    def _alternating_update(model, opt_state, batch, key):
        main_state, disc_state = opt_state
        model_key, disc_key = jr.split(key)
        (loss, terms), grads = eqx.filter_value_and_grad(batch_loss, has_aux=True)(model, batch, model_key)
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
        if _has_discriminator(model):
            model, opt_state, loss, terms = _alternating_update(model, opt_state, batch, key)
        else:
            (loss, terms), grads = eqx.filter_value_and_grad(batch_loss, has_aux=True)(model, batch, key, weak=weak)
            updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
            model = eqx.apply_updates(model, updates)
        if mesh is not None:
            model, opt_state = replicate((model, opt_state), mesh)
        return model, opt_state, loss, terms

    return step


def release_free_memory() -> bool:
    """Give the C allocator's free pages back to the OS (glibc's `malloc_trim`); False where unavailable.

    Compiling a large step frees hundreds of MB of XLA scratch that glibc keeps mapped; the step's
    own buffers are then allocated anew on top, so without this the process's peak RSS counts both.
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    return bool(trim(0))


def compile_step(step: Callable, *args: Any) -> tuple[Any, float]:
    """Compile `step` for these arguments without running it, then release the compiler's scratch
    memory. Returns the compiled step (later calls of `step` with like arguments reuse it too) and
    the seconds lowering and compilation took."""
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    seconds = time.perf_counter() - start
    release_free_memory()
    return compiled, seconds
