"""Transformation-sequence datasets (SPEC §1) as Grain pipelines, and the MNIST transforms."""

from .factors import (
    FACTOR_SIZES as FACTOR_SIZES,
    PngFolderSource as PngFolderSource,
    ProceduralShapes as ProceduralShapes,
    Shapes3DSource as Shapes3DSource,
)
from .mnist import (
    download_mnist as download_mnist,
    load_embedded_mnist as load_embedded_mnist,
    load_mnist_idx as load_mnist_idx,
)
from .pipeline import (
    DATASETS as DATASETS,
    DatasetInfo as DatasetInfo,
    batch_iterator as batch_iterator,
    dataset_info as dataset_info,
    sequence_dataset as sequence_dataset,
    split_indices as split_indices,
)
from .transforms import apply_transform as apply_transform, colourise as colourise
