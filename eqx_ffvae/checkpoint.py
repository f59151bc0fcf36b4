"""Save and restore a training state with Orbax: every array leaf of (model, optimiser state),
and a JSON record (PRNG key data, data-iterator state, …) in one atomic checkpoint per step.

Arrays are stored as a flat, ordered dict of leaves; restoring fills the leaves of a template
built from the same config, so the result is bit-identical to what was saved.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import orbax.checkpoint as ocp


class UnreadableCheckpoint(Exception):
    """A checkpoint's files cannot be read (truncated, missing metadata, not a checkpoint)."""


def _leaves(tree: Any) -> list[jax.Array]:
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


class Checkpointer:
    """A directory of numbered checkpoints (`<dir>/<step>/`), the newest `keep` kept.

    Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
    killed mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, create: bool = True):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, key: jax.Array, record: dict) -> None:
        """Save the array leaves of `state`, the key and a JSON-serialisable `record` at `step`."""
        arrays = {f"{i:05d}": leaf for i, leaf in enumerate(_leaves(state))}
        record = {**record, "key_data": np.asarray(jax.device_get(jr.key_data(key))).tolist()}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, template: Any, *, step: int | None = None) -> tuple[Any, jax.Array, dict, int]:
        """(state, key, record, step) of checkpoint `step` (default: the newest), shaped like `template`.

        Raises `UnreadableCheckpoint` if its files cannot be read, and ValueError (with the fix) if
        they hold arrays of other shapes than the template's."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        leaves = _leaves(template)
        like = {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(like), record=ocp.args.JsonRestore()),
            )
        except ValueError as err:
            shapes = re.search(r"Requested shape: (.*) is not compatible with the stored shape: ([^.]*)", str(err))
            if shapes is None:
                raise UnreadableCheckpoint(str(err).splitlines()[0] if str(err) else "ValueError") from None
            raise ValueError(
                f"checkpoint {self.directory / str(step)} does not fit this model: an array of shape "
                f"{shapes.group(2)} is stored where the model has {shapes.group(1)}. It was written for "
                "another configuration, or by an eqx_ffvae older than the (k, k, in, out) conv weight layout; "
                "rerun with the configuration that wrote it, or start over with --fresh"
            ) from None
        except Exception as err:  # Orbax/TensorStore raise many types for damaged files
            raise UnreadableCheckpoint(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
        arrays = restored["state"]
        params, static = eqx.partition(template, eqx.is_array)
        treedef = jax.tree.structure(params)
        new_params = jax.tree.unflatten(treedef, [arrays[f"{i:05d}"] for i in range(len(leaves))])
        record = dict(restored["record"])
        key = jr.wrap_key_data(np.asarray(record.pop("key_data"), np.uint32))
        return eqx.combine(new_params, static), key, record, step

    def close(self) -> None:
        self._manager.close()
