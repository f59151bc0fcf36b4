"""MNIST digits: the embedded 5,000-digit subset, the standard IDX files, and a verified download."""

from __future__ import annotations

import gzip
import http.client
import importlib.resources
import os
import zlib
from pathlib import Path

import numpy as np

from .download import Expected, fetch

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def load_embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits shipped in the package: uint8 images (N, 28, 28), labels (N,)."""
    ref = importlib.resources.files("eqx_ffvae.data") / "assets" / "mnist_5k.npz"
    with importlib.resources.as_file(ref) as path, np.load(path, allow_pickle=False) as npz:
        return npz["images"], npz["labels"]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one (optionally gzipped) IDX file of unsigned bytes."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(
            f"{path} cannot be read ({type(err).__name__}: {err}): truncated or not gzip; download it again"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} = {int(np.prod(shape))} bytes, file holds {body.size}")
    return body.reshape(shape)


def load_mnist_idx(data_dir: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Standard MNIST from `data_dir` (`train-images-idx3-ubyte.gz`, …): images (N, 28, 28), labels (N,)."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise FileNotFoundError(
            f"MNIST --data-dir {data_dir} is a file; pass the folder that holds the MNIST IDX files"
        )
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST directory {data_dir} does not exist (pass the folder that holds the IDX files)")
    if split not in _SPLIT_FILES:
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    paths = []
    for name in _SPLIT_FILES[split]:
        candidates = [data_dir / name, data_dir / name.removesuffix(".gz")]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise FileNotFoundError(f"{data_dir} has no {name}; expected the standard MNIST IDX files there")
        paths.append(found)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise ValueError(f"{paths[0]}: expected images (N, 28, 28) and N labels, got {images.shape}, {labels.shape}")
    return images, labels


def download_mnist(
    data_dir: str | os.PathLike,
    *,
    mirrors: tuple[str, ...] = MNIST_MIRRORS,
    files: dict[str, str] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch the MNIST IDX files into `data_dir`, each checked against its SHA-256 (`download.fetch`:
    resumable, renamed into place only once verified); each file tries the mirrors in order.
    Returns `data_dir`, ready for `--data-dir`."""
    files = MNIST_FILES if files is None else files
    data_dir = Path(data_dir)
    for name, digest in files.items():
        errors = []
        for mirror in mirrors:
            try:
                fetch(mirror + name, data_dir / name, Expected(digest), timeout=timeout, progress=progress)
                break
            except (OSError, ValueError, http.client.HTTPException) as err:
                errors.append(f"{mirror + name}: {err}")
        else:
            raise RuntimeError(f"could not download {name} into {data_dir}:\n  " + "\n  ".join(errors))
    return data_dir
