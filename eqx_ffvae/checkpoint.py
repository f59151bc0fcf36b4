"""Save and restore a training state with Orbax: every array leaf of (model, optimiser state),
and a JSON record (PRNG key data, data-iterator state, …) in one atomic checkpoint per step.

Arrays are stored as a flat, ordered dict of leaves; restoring fills the leaves of a template
built from the same config, so the result is bit-identical to what was saved.

With `background=True` a save returns once the arrays are copied off the device (the training step may
then donate them); a thread writes the files and the manifest while training goes on. The next save,
`restore`, `wait` and `close` wait for it first and raise what it raised.

A checkpoint is checked before any array is read: its shapes against the template's (from Orbax's
metadata) and its files against the size and SHA-256 recorded when it was saved (`files.json`). A
read that fails part-way leaves TensorStore callbacks firing into Orbax's closed event loop in the
live process, so a damaged or mismatched checkpoint is refused without starting one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
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
    killed mid-save leaves the previous checkpoint intact. `background`: saves finish in a thread
    (see the module docstring).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2, create: bool = True, background: bool = False):
        self.directory = Path(directory).absolute()
        self.background = background
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=create, enable_async_checkpointing=background
            ),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "record": ocp.JsonCheckpointHandler()},
        )
        self._finishing: threading.Thread | None = None
        self._failure: BaseException | None = None

    def latest_step(self) -> int | None:
        self.wait()
        return self._manager.latest_step()

    def save(self, step: int, state: Any, key: jax.Array, record: dict) -> None:
        """Save the array leaves of `state`, the key and a JSON-serialisable `record` at `step`: done on
        return, or (`background`) once `wait` returns; the arrays may be donated as soon as it returns."""
        self.wait()
        arrays = {f"{i:05d}": leaf for i, leaf in enumerate(_leaves(state))}
        record = {**record, "key_data": np.asarray(jax.device_get(jr.key_data(key))).tolist()}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)),
            force=True,
        )
        if not self.background:
            self._finish(step)
            return
        self._finishing = threading.Thread(target=self._finish_keeping_failure, args=(step,), name=f"checkpoint-{step}")
        self._finishing.start()

    def wait(self) -> None:
        """Block until the save in progress (if any) is complete, its manifest written; raise what it raised."""
        if self._finishing is not None:
            self._finishing.join()
            self._finishing = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _finish(self, step: int) -> None:
        self._manager.wait_until_finished()
        if jax.process_index() == 0:  # one writer of the manifest when processes share the directory
            step_dir = self.directory / str(step)
            tmp = step_dir / f".{_MANIFEST}.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(_file_digests(step_dir), indent=1, sort_keys=True))
            os.replace(tmp, step_dir / _MANIFEST)  # a kill mid-write leaves no manifest, not a damaged one

    def _finish_keeping_failure(self, step: int) -> None:
        try:
            self._finish(step)
        except BaseException as err:  # handed to the training thread by `wait`
            self._failure = err

    def restore(self, template: Any, *, step: int | None = None) -> tuple[Any, jax.Array, dict, int]:
        """(state, key, record, step) of checkpoint `step` (default: the newest), shaped like `template`.

        Raises `UnreadableCheckpoint` if its files cannot be read, and ValueError (with the fix) if
        they hold arrays of other shapes than the template's."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        leaves = _leaves(template)
        self._check(step, leaves)
        like = {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(like), record=ocp.args.JsonRestore()),
            )
        except Exception as err:  # Orbax/TensorStore raise many types for damaged files
            raise UnreadableCheckpoint(_first_line(err)) from None
        arrays = restored["state"]
        params, static = eqx.partition(template, eqx.is_array)
        treedef = jax.tree.structure(params)
        new_params = jax.tree.unflatten(treedef, [arrays[f"{i:05d}"] for i in range(len(leaves))])
        record = dict(restored["record"])
        key = jr.wrap_key_data(np.asarray(record.pop("key_data"), np.uint32))
        return eqx.combine(new_params, static), key, record, step

    def _check(self, step: int, leaves: list[jax.Array]) -> None:
        """Raise UnreadableCheckpoint if checkpoint `step`'s files differ from those saved, and
        ValueError (with the fix) if its arrays are not the template's shapes."""
        step_dir = self.directory / str(step)
        manifest = step_dir / _MANIFEST
        if manifest.is_file():
            try:
                saved = json.loads(manifest.read_text())
            except (OSError, ValueError) as err:
                raise UnreadableCheckpoint(f"{manifest} cannot be read ({err})") from None
            found = _file_digests(step_dir)
            changed = sorted(name for name, digest in found.items() if saved.get(name) != digest)
            missing = sorted(set(saved) - set(found))
            if changed or missing:
                raise UnreadableCheckpoint(f"files differ from those saved: {', '.join(changed + missing)}")
        try:
            stored = self._manager.item_metadata(step)["state"]
            shapes = {name: tuple(meta.shape) for name, meta in stored.items()}
        except Exception as err:  # no or damaged metadata
            raise UnreadableCheckpoint(_first_line(err)) from None
        wanted = {f"{i:05d}": tuple(leaf.shape) for i, leaf in enumerate(leaves)}
        if set(shapes) != set(wanted):
            raise ValueError(
                f"checkpoint {step_dir} does not fit this model: it holds {len(shapes)} arrays where the model "
                f"has {len(wanted)}. It was written for another configuration; rerun with the configuration "
                "that wrote it, or start over with --fresh"
            )
        for name in sorted(wanted):
            if shapes[name] != wanted[name]:
                raise ValueError(
                    f"checkpoint {step_dir} does not fit this model: an array of shape {shapes[name]} is stored "
                    f"where the model has {wanted[name]}. It was written for another configuration, or by an "
                    "eqx_ffvae older than the (k, k, in, out) conv weight layout; rerun with the configuration "
                    "that wrote it, or start over with --fresh"
                )

    def close(self) -> None:
        """Finish the save in progress (raising what it raised), then release Orbax's resources."""
        try:
            self.wait()
        finally:
            self._manager.close()


_MANIFEST = "files.json"


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _file_digests(step_dir: Path) -> dict[str, list]:
    """{relative path: [size, sha256]} of every file of a checkpoint but the manifest itself."""
    digests = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != _MANIFEST):
        data = path.read_bytes()
        digests[str(path.relative_to(step_dir))] = [len(data), hashlib.sha256(data).hexdigest()]
    return digests
