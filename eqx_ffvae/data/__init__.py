"""Transformation-sequence datasets (docs/method.md §1) as Grain pipelines, and the MNIST transforms."""

from .arrays import DataError as DataError
from .arrays import SequenceArrays as SequenceArrays
from .arrays import file_dataset as file_dataset
from .arrays import load_sequences as load_sequences
from .arrays import sequences_from_arrays as sequences_from_arrays
from .factors import (
    FACTOR_SIZES as FACTOR_SIZES,
)
from .factors import (
    PngFolderSource as PngFolderSource,
)
from .factors import (
    ProceduralShapes as ProceduralShapes,
)
from .factors import (
    Shapes3DSource as Shapes3DSource,
)
from .mnist import (
    download_mnist as download_mnist,
)
from .mnist import (
    load_embedded_mnist as load_embedded_mnist,
)
from .mnist import (
    load_mnist_idx as load_mnist_idx,
)
from .pipeline import (
    SPLITS as SPLITS,
)
from .pipeline import (
    batch_iterator as batch_iterator,
)
from .pipeline import (
    sequence_dataset as sequence_dataset,
)
from .pipeline import (
    split_indices as split_indices,
)
from .registry import (
    BUILT_IN as BUILT_IN,
)
from .registry import (
    DATASETS as DATASETS,
)
from .registry import (
    DatasetInfo as DatasetInfo,
)
from .registry import (
    dataset_info as dataset_info,
)
from .registry import register_sequences as register_sequences
from .registry import sequence_arrays as sequence_arrays
from .transforms import apply_transform as apply_transform
from .transforms import colourise as colourise
