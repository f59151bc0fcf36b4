"""A researcher's own sequences: arrays in memory or an `.npz` / `.npy` file, labelled or not.

Frames are `[N, T+1, C, H, W]` or `[N, T+1, H, W, C]` (C ∈ {1, 3}; `layout` says which when the
shape does not), uint8 or floating point in [0, 1]; `k [N]` (optional) says which transformation
made each sequence, `transforms` names them. Without `k` the number of transformations must be
given (`num_flows`, or `transforms`): such data trains weakly supervised methods only. A file is
an `.npz` of those arrays (`np.savez(path, frames=…, k=…, transforms=…)`).

In Python, `register_sequences(name, frames, k)` puts the arrays under a dataset name that every
entry point (`runs.resolve(dataset=…)`, `sequence_dataset`) accepts, in this process. A file is the
dataset `file:<absolute path>` (`file_dataset(path)`; the command line's `--data PATH`): any
process opens it again by that name, so a run on it resumes and evaluates like one on MNIST.
Everything is checked when the data is opened; a bad array raises `DataError`, one line naming
what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LAYOUTS = ("auto", "ntchw", "nthwc")
CHANNELS = (1, 3)
FILE_PREFIX = "file:"
UNLABELLED = -1
"""The k a sequence of unlabelled data carries (no method reads it: only weak ones train on such data)."""


class DataError(ValueError):
    """Sequences that cannot be used: the message says what is wrong and how to fix it, in one line."""


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceArrays:
    """Checked sequences: `frames` (N, T+1, C, H, W), uint8 or float32 in [0, 1]; `k` (N,) int32 in
    [0, len(transforms)) or None (unlabelled); `transforms` the transformations' names."""

    frames: np.ndarray
    k: np.ndarray | None
    transforms: tuple[str, ...]
    about: str = "arrays given in Python"

    @property
    def labelled(self) -> bool:
        return self.k is not None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.frames.shape[2:])

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[1])

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def sequence(self, index: int, *, compact: bool) -> np.ndarray:
        """Sequence `index` as the pipeline ships it: float32 in [0, 1], or with `compact` uint8 data
        as it is (made float on the device, `device.frames`)."""
        x = np.asarray(self.frames[index])
        if x.dtype == np.uint8:
            return x if compact else x.astype(np.float32) / np.float32(255.0)
        return x.astype(np.float32, copy=False)


def _channels_first(shape: tuple[int, ...], layout: str, where: str) -> bool:
    if layout not in LAYOUTS:
        raise DataError(f"{where}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        return layout == "ntchw"
    first, last = shape[2] in CHANNELS, shape[4] in CHANNELS
    if first == last:
        raise DataError(
            f"{where}: cannot tell the channel axis of frames of shape {shape} (1 or 3 channels, at axis 2 "
            "or 4); pass layout='ntchw' for [N, T+1, C, H, W] or 'nthwc' for [N, T+1, H, W, C]"
        )
    return first


def sequences_from_arrays(
    frames: np.ndarray | Sequence,
    k: np.ndarray | None = None,
    *,
    transforms: Sequence[str] | np.ndarray | None = None,
    num_flows: int | None = None,
    layout: str = "auto",
    where: str = "frames",
    about: str = "arrays given in Python",
) -> SequenceArrays:
    """Check `frames` (and `k`, `transforms`) and give them in the package's layout.

    The number of transformations K is `len(transforms)`, else `num_flows`, else (labelled data)
    max(k) + 1; unnamed transformations are called `transformation_0 …`. Float frames are checked
    for NaN/inf and for [0, 1] in one pass over the data (a memory-mapped file is read once).
    """
    if not isinstance(frames, np.ndarray):
        try:
            frames = np.asarray(frames)
        except ValueError:  # numpy refuses ragged nesting
            frames = np.empty(0, object)
    if frames.dtype == object:
        raise DataError(
            f"{where} is not one numeric array (sequences of different lengths or sizes?); every sequence needs "
            "the same number of frames and image size: cut them to one length"
        )
    if frames.ndim != 5:
        raise DataError(f"{where} must have rank 5, [N, T+1, C, H, W] or [N, T+1, H, W, C], got shape {frames.shape}")
    if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype, np.floating):
        raise DataError(f"{where} must be uint8 (0…255) or floating point in [0, 1], got dtype {frames.dtype}")
    if frames.shape[0] < 1 or frames.shape[1] < 2:
        raise DataError(f"{where} needs at least one sequence of at least 2 frames, got shape {frames.shape}")
    channels_first = _channels_first(tuple(frames.shape), layout, where)
    channels = frames.shape[2] if channels_first else frames.shape[4]
    if channels not in CHANNELS:
        raise DataError(f"{where} must have 1 or 3 channels, got {channels} (shape {frames.shape}, layout {layout!r})")
    if not channels_first:
        frames = np.moveaxis(frames, 4, 2)
    if frames.dtype != np.uint8:
        _check_unit_interval(frames, where)
    names = None if transforms is None else tuple(str(t) for t in np.asarray(transforms).reshape(-1))
    if names is not None and (not names or len(set(names)) != len(names)):
        raise DataError(f"transforms must be distinct names, one per transformation, got {names}")
    if names is not None and num_flows is not None and num_flows != len(names):
        raise DataError(f"num_flows = {num_flows} but {len(names)} transformation names were given: {names}")
    if num_flows is not None and (isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1):
        raise DataError(f"num_flows must be an integer ≥ 1, got {num_flows!r}")
    count = len(names) if names is not None else num_flows
    if k is not None:
        k = _checked_labels(np.asarray(k), len(frames), count, where.replace("frames", "k"))
        count = int(k.max()) + 1 if count is None else count
    elif count is None:
        raise DataError(
            f"{where} has no labels k, so the number of transformations must be given: num_flows=K, "
            "or their names (a 'transforms' array)"
        )
    names = names or tuple(f"transformation_{i}" for i in range(count))
    if frames.dtype != np.uint8 and frames.dtype != np.float32:
        frames = frames.astype(np.float32)
    return SequenceArrays(frames, k, names, about)


def _check_unit_interval(frames: np.ndarray, where: str, chunk: int = 256) -> None:
    low, high = np.inf, -np.inf
    for start in range(0, len(frames), chunk):
        block = np.asarray(frames[start : start + chunk])
        if not np.all(np.isfinite(block)):
            bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
            raise DataError(
                f"{where} holds NaN or inf (first in sequence {bad}); float frames must be finite, in [0, 1]"
            )
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    if low < 0 or high > 1:
        raise DataError(
            f"{where} spans [{low:g}, {high:g}]; float frames must be in [0, 1] (divide 0…255 data by 255, "
            "or save it as uint8)"
        )


def _checked_labels(k: np.ndarray, n: int, count: int | None, where: str) -> np.ndarray:
    if k.shape != (n,):
        raise DataError(f"{where} must have one label per sequence, shape ({n},), got shape {k.shape}")
    if not np.issubdtype(k.dtype, np.integer):
        if not (np.issubdtype(k.dtype, np.floating) and np.all(np.isfinite(k)) and np.all(k == np.round(k))):
            raise DataError(
                f"{where} must hold integers (which transformation made each sequence), got dtype {k.dtype}"
            )
    low, high = int(k.min()), int(k.max())
    limit = f"[0, {count})" if count is not None else "[0, K)"
    if low < 0 or (count is not None and high >= count):
        raise DataError(
            f"{where} must be in {limit}, one of the {count or 'K'} transformations; got values {low} … {high}"
        )
    return k.astype(np.int32)


def load_sequences(path: str | os.PathLike) -> SequenceArrays:
    """The sequences of an `.npz` file: `frames`, and optionally `k`, `transforms` (names), `num_flows`
    (unlabelled data names no transformation: it must say how many to find) and `layout`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; pass an .npz file of sequences")
    if path.suffix != ".npz":
        raise DataError(
            f"{path}: sequences come as an .npz file (np.savez(path, frames=…, k=…, transforms=…)), got {path.suffix!r}"
        )
    if not zipfile.is_zipfile(path):
        raise DataError(f"cannot read {path}: not an .npz archive (write it with np.savez or np.savez_compressed)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = archive.files
            if "frames" not in files:
                raise DataError(f"{path} has no array 'frames' (it holds {', '.join(files) or 'nothing'})")
            count = int(archive["num_flows"]) if "num_flows" in files else None
            return sequences_from_arrays(
                archive["frames"],
                archive["k"] if "k" in files else None,
                transforms=archive["transforms"] if "transforms" in files else None,
                num_flows=count,
                layout=str(archive["layout"]) if "layout" in files else "auto",
                where=f"{path} frames",
                about=f"sequences of {path}",
            )
    except DataError as err:
        message = str(err).replace("num_flows=K,", "an array num_flows=K in the file,")
        raise DataError(message.replace("pass layout=", "add an array layout= to the file:")) from None
    except ValueError as err:
        if "Object arrays" in str(err):
            raise DataError(
                f"{path} holds an object array (sequences of different lengths?); save frames as one numeric "
                "array [N, T+1, …]: every sequence the same number of frames"
            ) from None
        raise DataError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def file_dataset(path: str | os.PathLike) -> str:
    """The dataset name of a sequences file: `file:` and its absolute path."""
    return f"{FILE_PREFIX}{Path(path).resolve()}"


def file_path(name: str) -> Path | None:
    """The file of a `file:` dataset name, else None."""
    return Path(name[len(FILE_PREFIX) :]) if name.startswith(FILE_PREFIX) else None
