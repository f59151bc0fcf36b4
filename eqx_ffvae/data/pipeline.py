"""Grain pipelines of transformation sequences (docs/method.md §1).

source indices → split → shard → shuffle(seed) → repeat → random_map (build one sequence) →
batch → iterator (optionally worker processes). Every element is
`{"frames": float32 (T+1, C, H, W) in [0, 1], "k": int32, "index": int64 …}`; factor datasets add
`"factors"` (T+1, F), the factor values of each frame. Deterministic per seed; the iterator's
state saves and restores (`get_state` / `set_state`), so a resumed run sees the same batches.
"""

from __future__ import annotations

import os
from pathlib import Path

import grain
import numpy as np
from absl import flags

from .arrays import UNLABELLED, SequenceArrays
from .compositions import MnistComposition
from .factors import PngFolderSource, ProceduralShapes, Shapes3DSource
from .mnist import download_mnist, load_embedded_mnist, load_mnist_idx
from .registry import dataset_info, sequence_arrays
from .transforms import MNIST_FRAMES, MNIST_TRANSFORMS, colourise, mnist_frames, mnist_probe_frames


class _Transformation:
    """How a sequence builder picks k: given, uniform per sequence, or uniform per group.

    With `group_size`, elements arrive as `(position, index)` and every run of `group_size`
    consecutive positions shares one k drawn from `(group_seed, position // group_size)`: a batch of
    that size (consecutive positions) then holds one transformation.
    """

    def __init__(self, num_flows: int, k: int | None, group_size: int | None, group_seed: int):
        self.num_flows, self.k, self.group_size, self.group_seed = num_flows, k, group_size, group_seed

    def pick(self, element, rng: np.random.Generator) -> tuple[int, int]:
        """(index of the source element, k)."""
        if self.group_size is not None:
            position, index = element
            group = np.random.default_rng((self.group_seed, int(position) // self.group_size))
            return int(index), int(group.integers(self.num_flows))
        k = int(rng.integers(self.num_flows)) if self.k is None else self.k
        return int(element), k


class MnistSequence(grain.transforms.RandomMap):
    """Index of a digit → its colourised sequence under transformation k (given, or uniform)."""

    def __init__(
        self,
        images: np.ndarray,
        k: int | None,
        num_frames: int = MNIST_FRAMES,
        *,
        choice=None,
        probes: bool = False,
        compact: bool = False,
    ):
        self.images, self.num_frames, self.probes, self.compact = images, num_frames, probes, compact
        self.choice = choice or _Transformation(len(MNIST_TRANSFORMS), k, None, 0)

    def random_map(self, element, rng: np.random.Generator):
        index, k = self.choice.pick(element, rng)
        if self.compact:
            return {"digits": np.asarray(self.images[index], np.uint8), "k": np.int32(k), "index": np.int64(index)}
        x0 = colourise(self.images[index].astype(np.float32) / 255.0)
        frames = mnist_frames(x0, k, np.arange(self.num_frames))
        out = {"frames": frames, "k": np.int32(k), "index": np.int64(index)}
        if self.probes:
            out.update(mnist_probe_frames(x0, k, self.num_frames))
        return out


class FactorSequence(grain.transforms.RandomMap):
    """Index of a factor combination → the sweep of flow k's factor over consecutive values.

    All other factors keep the values of the drawn combination; the sweep starts at a uniform
    position that fits (it never wraps into a neighbouring factor).
    """

    def __init__(
        self,
        source,
        flow_factors: tuple[int, ...],
        num_frames: int,
        k: int | None,
        *,
        choice=None,
        compact: bool = False,
    ):
        self.source, self.flow_factors, self.num_frames, self.compact = source, flow_factors, num_frames, compact
        self.choice = choice or _Transformation(len(flow_factors), k, None, 0)
        sizes = source.factor_sizes
        short = [f for f in flow_factors if sizes[f] < num_frames]
        if short:
            raise ValueError(
                f"factors {short} of sizes {[sizes[f] for f in short]} are too short for {num_frames} frames"
            )

    def random_map(self, element, rng: np.random.Generator):
        sizes = self.source.factor_sizes
        index, k = self.choice.pick(element, rng)
        factor = self.flow_factors[k]
        start = int(rng.integers(sizes[factor] - self.num_frames + 1))
        factors = np.tile(np.array(np.unravel_index(int(index), sizes), np.int32), (self.num_frames, 1))
        factors[:, factor] = start + np.arange(self.num_frames)
        indices = np.ravel_multi_index(tuple(factors.T), sizes).astype(np.int64)
        frames = np.ascontiguousarray(self.source.images(indices).transpose(0, 3, 1, 2))
        if not self.compact:
            frames = frames.astype(np.float32) / 255.0
        return {"frames": frames, "k": np.int32(k), "index": indices, "factors": factors}


class ArraySequence(grain.transforms.RandomMap):
    """Index of a user's sequence → its frames and label (`UNLABELLED` without labels)."""

    def __init__(self, arrays: SequenceArrays, num_frames: int, *, compact: bool = False):
        self.arrays, self.num_frames, self.compact = arrays, num_frames, compact

    def random_map(self, element, rng: np.random.Generator):
        index = int(element)
        frames = self.arrays.sequence(index, compact=self.compact)[: self.num_frames]
        k = UNLABELLED if self.arrays.k is None else int(self.arrays.k[index])
        return {"frames": frames, "k": np.int32(k), "index": np.int64(index)}


SPLITS = ("train", "validation", "test")


def split_indices(
    n: int, split: str, *, test_fraction: float = 0.1, validation_fraction: float = 0.0, split_seed: int = 0
) -> np.ndarray:
    """A fixed, disjoint train/validation/test partition of range(n), independent of the training seed.

    One permutation by `split_seed`: its first round(test_fraction·n) are "test", the next
    round(validation_fraction·n) "validation", the rest "train". With no validation (the default) the
    train and test splits are those of the two-way partition, so adding a validation split only takes
    sequences out of "train".
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0 <= validation_fraction < 1 - test_fraction:
        raise ValueError(
            f"validation_fraction must be in [0, 1 - test_fraction) = [0, {1 - test_fraction:g}), got {validation_fraction}"
        )
    if split == "validation" and validation_fraction == 0:
        raise ValueError("the validation split is empty: pass validation_fraction > 0 (--validation-fraction)")
    perm = np.random.default_rng(split_seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    n_val = int(round(validation_fraction * n))
    part = {"test": perm[:n_test], "validation": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    return np.sort(part[split])


def _carve_validation(n: int, split: str, validation_fraction: float, split_seed: int) -> np.ndarray:
    """The "train" or "validation" share of a dataset whose official training file is all training
    data (full MNIST): a fixed round(validation_fraction·n) of it, by `split_seed`, is validation."""
    perm = np.random.default_rng(split_seed).permutation(n)
    n_val = max(1, int(round(validation_fraction * n)))
    return np.sort(perm[:n_val] if split == "validation" else perm[n_val:])


def _open_factor_source(name: str, data_dir: str | os.PathLike | None, factor_sizes):
    info = dataset_info(name)
    sizes = tuple(factor_sizes) if factor_sizes is not None else info.factor_sizes
    if info.source == "procedural":
        return ProceduralShapes()
    if data_dir is None:
        raise FileNotFoundError(f"{name} needs data_dir=… (the folder holding the dataset); see docs/guide/data.md")
    data_dir = Path(data_dir)
    if info.source == "hdf5":
        return Shapes3DSource(data_dir / "3dshapes.h5" if data_dir.is_dir() else data_dir, sizes)
    return PngFolderSource(data_dir, sizes, image_size=info.image_shape[-1])


def sequence_dataset(
    name: str,
    *,
    split: str = "train",
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    k: int | None = None,
    num_epochs: int | None = 1,
    shard_index: int = 0,
    shard_count: int = 1,
    test_fraction: float = 0.1,
    validation_fraction: float = 0.0,
    split_seed: int = 0,
    download: bool = False,
    factor_sizes: tuple[int, ...] | None = None,
    num_frames: int | None = None,
    group_size: int | None = None,
    probes: bool = False,
    compact: bool = False,
) -> grain.MapDataset:
    """A `grain.MapDataset` of sequences of dataset `name` (docs/method.md §1).

    k: a fixed transformation, or None for uniform k per sequence. num_epochs=None repeats forever,
    with a new shuffle and new k draws each epoch. shard_index/shard_count: this process's disjoint
    share (multi-host). MNIST without data_dir uses the embedded 5,000 digits, split by split_seed;
    with data_dir, the official train/test files (download=True fetches them, checksummed).
    factor_sizes and num_frames override the dataset's table (reduced grids, shorter sequences).
    group_size: every `group_size` consecutive sequences share one k (uniform per group): batched by
    `batch_iterator` with that batch size, each batch holds one transformation (group supervision).
    split: "train", "validation" (held out of "train" when validation_fraction > 0: for choosing
    hyper-parameters; from the official MNIST training file when data_dir is given) or "test".
    probes (MNIST only): each sequence also carries the ground truth of docs/method.md §5's extrapolation and
    composition probes (`transforms.mnist_probe_frames`).
    compact: what the training step finishes on the device (`data.device.frames`): MNIST elements
    carry the uint8 digit as "digits" instead of "frames", factor datasets uint8 "frames".
    """
    info = dataset_info(name)
    num_frames = info.num_frames if num_frames is None else num_frames
    mnist_like = info.source in ("mnist", "composition")
    if num_frames < 2 or (mnist_like and num_frames > MNIST_FRAMES):
        raise ValueError(f"num_frames must be ≥ 2 (≤ {MNIST_FRAMES} for mnist), got {num_frames}")
    if info.source == "arrays" and num_frames > info.num_frames:
        raise ValueError(f"num_frames must be ≤ the {info.num_frames} frames of {name}'s sequences, got {num_frames}")
    if info.source == "arrays" and (k is not None or group_size is not None):
        raise ValueError(
            f"{name} is a user's sequences: its k are its labels (a fixed k or group sampling is for generated data)"
        )
    if info.source == "composition" and (k is not None or group_size is not None or probes):
        raise ValueError(f"{name}'s sequences compose transformations: no fixed k, group sampling or probes")
    if k is not None and not 0 <= k < info.num_flows:
        raise ValueError(f"{name} has transformations k = 0…{info.num_flows - 1} {info.transforms}, got k = {k}")
    if group_size is not None and (k is not None or group_size < 1):
        raise ValueError(f"group_size must be ≥ 1 and excludes a fixed k, got group_size={group_size}, k={k}")
    if probes and compact:
        raise ValueError("probes carry float frames for evaluation; compact batches are for training only")
    if probes and info.source != "mnist":
        raise ValueError(f"extrapolation and composition probes need MNIST's analytic transformations; {name} has none")
    choice = _Transformation(info.num_flows, k, group_size, seed)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if mnist_like:
        if data_dir is None:
            images, _ = load_embedded_mnist()
            indices = split_indices(
                len(images),
                split,
                test_fraction=test_fraction,
                validation_fraction=validation_fraction,
                split_seed=split_seed,
            )
        else:
            if download:
                download_mnist(data_dir)
            images, _ = load_mnist_idx(data_dir, "test" if split == "test" else "train")
            indices = np.arange(len(images))
            if split != "test" and validation_fraction > 0:
                indices = _carve_validation(len(images), split, validation_fraction, split_seed)
            elif split == "validation":
                raise ValueError("the validation split is empty: pass validation_fraction > 0 (--validation-fraction)")
        if info.source == "composition":
            builder = MnistComposition(images, num_frames, info.active_per_step, compact=compact)
        else:
            builder = MnistSequence(images, k, num_frames, choice=choice, probes=probes, compact=compact)
    elif info.source == "arrays":
        arrays = sequence_arrays(name)
        indices = split_indices(
            len(arrays),
            split,
            test_fraction=test_fraction,
            validation_fraction=validation_fraction,
            split_seed=split_seed,
        )
        builder = ArraySequence(arrays, num_frames, compact=compact)
    else:
        source = _open_factor_source(name, data_dir, factor_sizes)
        indices = split_indices(
            len(source),
            split,
            test_fraction=test_fraction,
            validation_fraction=validation_fraction,
            split_seed=split_seed,
        )
        builder = FactorSequence(source, info.flow_factors, num_frames, k, choice=choice, compact=compact)
    indices = indices[shard_index::shard_count]
    ds = grain.MapDataset.source(indices).shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if group_size is not None:
        ds = ds.map_with_index(lambda position, index: (position, index))
    return ds.random_map(builder, seed=seed)


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; mark them parsed when no absl app did."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def batch_iterator(
    dataset: grain.MapDataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    drop_remainder: bool = True,
    prefetch_buffer: int = 4,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """Batches of `dataset` as a checkpointable iterator (`get_state()` / `set_state(state)`).

    With several processes (multi-host training) each gets its own rows of every global batch of
    `batch_size`, so together they see exactly the batches one process would. num_workers > 0
    builds sequences in that many processes (started with `spawn`: call this from under
    `if __name__ == "__main__":` in scripts); with none, a background thread builds the next
    `prefetch_buffer` batches while the accelerator works on this one.
    """
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"batch_size must be a positive multiple of the {process_count} processes, got {batch_size}")
    local = batch_size // process_count
    # Elements are built one after another in the iterator's own thread (grain's default pool of 16
    # threads contends for the GIL, and the CPU time it takes comes from the training step:
    # docs/performance.md).
    ds = dataset.batch(local, drop_remainder=drop_remainder)[process_index::process_count]
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch_buffer)
        )
    elif prefetch_buffer > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch_buffer)
    return iter(ds)
