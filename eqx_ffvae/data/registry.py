"""The dataset registry: what a model needs to know of each dataset (`DatasetInfo`), the built-in
datasets, and a user's sequences registered in this process (`register_sequences`, `file:` names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .arrays import DataError, SequenceArrays, file_path, load_sequences, sequences_from_arrays
from .factors import FACTOR_SIZES
from .transforms import MNIST_FRAMES, MNIST_TRANSFORMS


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: what a model needs to know of a dataset (frames per sequence, the names of
    its transformations, image shape) and how to open it.

    `flow_factors[k]`: the factor that transformation k sweeps (factor datasets); `factor_sizes`: the
    factor grid; `source`: how the data is read ("mnist" IDX files or the embedded subset, an "hdf5"
    file, a "png-folder", "procedural" rendering, or a user's "arrays": `register_sequences`, a
    `file:` dataset); `data_dir`: "optional" (embedded or rendered data without it), "required" or
    "unused"; `offline`: the dataset to use instead when no data_dir is given (Shapes3D → procedural
    shapes); `labelled`: whether each sequence says which transformation made it (only a user's
    arrays and the composed sequences may not: methods that infer the transformations only);
    `active_per_step`: how many transformations act at each step of a composed sequence (0: one
    transformation per sequence); `composed_from`: the single-transformation dataset whose digits and
    transformations a composed one uses (its held-out sequences are where a model trained on the composed
    data is scored beside every other method).
    """

    num_frames: int
    transforms: tuple[str, ...]
    image_shape: tuple[int, int, int]
    flow_factors: tuple[int, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    source: Literal["mnist", "composition", "hdf5", "png-folder", "procedural", "arrays"] = "png-folder"
    data_dir: Literal["optional", "required", "unused"] = "required"
    offline: str | None = None
    about: str = ""
    labelled: bool = True
    active_per_step: int = 0
    composed_from: str | None = None

    @property
    def num_flows(self) -> int:
        return len(self.transforms)


_SHAPES = dict(
    num_frames=8,
    transforms=("floor_hue", "wall_hue", "object_hue", "scale", "orientation"),
    image_shape=(3, 64, 64),
    flow_factors=(0, 1, 2, 3, 5),
    factor_sizes=FACTOR_SIZES["shapes3d"],
)
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        MNIST_FRAMES,
        MNIST_TRANSFORMS,
        (3, 28, 28),
        source="mnist",
        data_dir="optional",
        about="coloured MNIST digits scaled, rotated and hue-shifted; the embedded 5,000 without --data-dir",
    ),
    **{
        f"mnist-{name}": DatasetInfo(
            MNIST_FRAMES,
            MNIST_TRANSFORMS,
            (3, 28, 28),
            source="composition",
            data_dir="optional",
            labelled=False,
            active_per_step=active,
            composed_from="mnist",
            about=f"coloured MNIST digits with {active} of scale, rotation and hue acting at each step "
            "(active sets recorded for evaluation only)",
        )
        for name, active in (("single", 1), ("double", 2))
    },
    "shapes3d": DatasetInfo(**_SHAPES, source="hdf5", offline="procedural-shapes", about="DeepMind 3dshapes.h5"),
    "procedural-shapes": DatasetInfo(
        **_SHAPES, source="procedural", data_dir="unused", about="Shapes3D's factors, rendered offline"
    ),
    "falcor3d": DatasetInfo(
        5,
        ("lighting_intensity", "lighting_x", "lighting_y", "lighting_z", "camera_x", "camera_y", "camera_z"),
        (3, 128, 128),
        tuple(range(7)),
        FACTOR_SIZES["falcor3d"],
        about="NVlabs Falcor3D PNG folder",
    ),
    "isaac3d": DatasetInfo(
        4,
        (
            "robot_x",
            "robot_y",
            "camera_height",
            "object_scale",
            "lighting_intensity",
            "lighting_y_dir",
            "object_colour",
            "wall_colour",
        ),
        (3, 128, 128),
        tuple(range(1, 9)),
        FACTOR_SIZES["isaac3d"],
        about="NVlabs Isaac3D PNG folder",
    ),
}


BUILT_IN = tuple(DATASETS)
_ARRAYS: dict[str, SequenceArrays] = {}


def register_sequences(
    name: str,
    frames: np.ndarray | SequenceArrays,
    k: np.ndarray | None = None,
    *,
    transforms: Sequence[str] | np.ndarray | None = None,
    num_flows: int | None = None,
    layout: str = "auto",
    about: str = "",
) -> DatasetInfo:
    """Make the sequences `frames` (with labels `k`, or unlabelled) the dataset `name` in this process,
    for `sequence_dataset`, `runs.resolve(dataset=name)` and everything above them (arrays.py says
    what is accepted; bad data raises `arrays.DataError`). A name registered before is replaced;
    the built-in datasets' names and `file:` names are not available."""
    if not isinstance(name, str) or not name or name in BUILT_IN or file_path(name) is not None:
        raise DataError(
            f"cannot register sequences as {name!r}: choose a new name (not {', '.join(BUILT_IN)} or file:…)"
        )
    seqs = (
        frames
        if isinstance(frames, SequenceArrays)
        else sequences_from_arrays(
            frames, k, transforms=transforms, num_flows=num_flows, layout=layout, about=about or f"sequences {name!r}"
        )
    )
    return _add_arrays(name, seqs)


def _add_arrays(name: str, seqs: SequenceArrays) -> DatasetInfo:
    _ARRAYS[name] = seqs
    DATASETS[name] = DatasetInfo(
        seqs.num_frames,
        seqs.transforms,
        seqs.image_shape,
        source="arrays",
        data_dir="unused",
        about=seqs.about,
        labelled=seqs.labelled,
    )
    return DATASETS[name]


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of `name`; a `file:` dataset is opened (and checked) on first use."""
    if name not in DATASETS and file_path(name) is not None:
        return _add_arrays(name, load_sequences(file_path(name)))
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or a file (--data PATH); sequences given "
            "to data.register_sequences are known to the process that registered them: register them again"
        )
    return DATASETS[name]


def sequence_arrays(name: str) -> SequenceArrays:
    """The checked arrays of a user's dataset (`register_sequences` or a `file:` name)."""
    if dataset_info(name).source != "arrays":
        raise ValueError(f"{name} is a built-in dataset, not a user's arrays")
    return _ARRAYS[name]
