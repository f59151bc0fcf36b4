"""Image sources indexed by a grid of factors, stored row-major: Shapes3D (h5), the NVlabs PNG
folders (Falcor3D, Isaac3D) and a procedural renderer with Shapes3D's factors, for offline runs.

Each source gives `factor_sizes`, `len()` and `images(indices) -> uint8 (n, H, W, 3)`; image
`i` shows the factor values `np.unravel_index(i, factor_sizes)`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from .transforms import hsv_to_rgb

FACTOR_SIZES = {
    "shapes3d": (10, 10, 10, 8, 4, 15),
    "procedural-shapes": (10, 10, 10, 8, 4, 15),
    "falcor3d": (5, 6, 6, 6, 6, 6, 6),
    "isaac3d": (3, 8, 5, 4, 4, 4, 6, 4, 4),
}


def _check_count(path: Path, count: int, factor_sizes: tuple[int, ...]) -> None:
    expected = math.prod(factor_sizes)
    if count != expected:
        raise ValueError(
            f"{path} holds {count} images but the factor grid {factor_sizes} needs {expected}; "
            "point at the complete dataset or pass --factor-sizes matching it"
        )


class Shapes3DSource:
    """`3dshapes.h5` (`images` uint8 N×64×64×3, `labels` N×6), read lazily: never all in memory."""

    def __init__(self, path: str | os.PathLike, factor_sizes: tuple[int, ...] = FACTOR_SIZES["shapes3d"]):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Shapes3D file {self.path} does not exist (expected 3dshapes.h5)")
        self.factor_sizes = tuple(factor_sizes)
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(
                f"{self.path} is not a readable HDF5 file ({err}); point at DeepMind's 3dshapes.h5"
            ) from None
        with f:
            for key in ("images", "labels"):
                if key not in f:
                    raise ValueError(f"{self.path} has no dataset {key!r}; a Shapes3D file holds 'images' and 'labels'")
            shape = f["images"].shape
            if len(shape) != 4 or shape[1:] != (64, 64, 3) or f["images"].dtype != np.uint8:
                raise ValueError(f"{self.path}: 'images' must be uint8 N×64×64×3, got {f['images'].dtype} {shape}")
            _check_count(self.path, shape[0], self.factor_sizes)
        self._file = None

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    def _h5(self):
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def images(self, indices: np.ndarray) -> np.ndarray:
        return self._read("images", indices)

    def labels(self, indices: np.ndarray) -> np.ndarray:
        return self._read("labels", indices)

    def _read(self, key: str, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        order = np.argsort(indices)
        data = self._h5()[key][indices[order]]
        out = np.empty_like(data)
        out[order] = data
        return out

    def __getstate__(self):
        return {**self.__dict__, "_file": None}


def store_path(folder: str | os.PathLike, image_size: int) -> Path:
    """Where `prepare_png_folder` keeps a folder's images at `image_size` px: one uint8 .npy."""
    return Path(folder) / f"eqx_ffvae-{image_size}px.npy"


class PngFolderSource:
    """A folder of PNGs whose sorted order is row-major over the factors (the NVlabs layout).

    Images larger than `image_size` are downsampled on the fly (area filter); an already
    downsampled folder is read as it is. If `prepare_png_folder` has written the folder's store
    (`store_path`), frames are read from it (memory-mapped, no PNG decoding); a store that does not
    match the folder (another image count or size) is an error that names it.
    """

    def __init__(self, folder: str | os.PathLike, factor_sizes: tuple[int, ...], image_size: int = 128):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        files = sorted(folder.glob("*.png"))
        if not files and (folder / "images").is_dir():
            folder, files = folder / "images", sorted((folder / "images").glob("*.png"))
        if not files:
            raise FileNotFoundError(f"{folder} holds no .png images")
        self.folder, self.files = folder, [str(p) for p in files]
        self.factor_sizes, self.image_size = tuple(factor_sizes), image_size
        _check_count(folder, len(self.files), self.factor_sizes)
        self.store = None
        store = store_path(folder, image_size)
        if store.exists():
            self.store = np.load(store, mmap_mode="r")
            if self.store.shape != (len(self.files), image_size, image_size, 3) or self.store.dtype != np.uint8:
                raise ValueError(
                    f"{store} holds {self.store.dtype} {self.store.shape}, not the folder's {len(self.files)} images "
                    f"at {image_size} px; delete it or run `train/run.py prepare` again"
                )
        self._load(0)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> np.ndarray:
        path = self.files[index]
        with Image.open(path) as img:
            if img.mode not in ("RGB", "RGBA"):
                raise ValueError(f"{path} has mode {img.mode}; expected an RGB (or RGBA) PNG")
            w, h = img.size
            if w != h or w < self.image_size:
                raise ValueError(f"{path} is {w}×{h}; expected square images of at least {self.image_size} px")
            img = img.convert("RGB")
            if w != self.image_size:
                img = img.resize((self.image_size, self.image_size), Image.Resampling.BOX)
            return np.asarray(img, np.uint8)

    def images(self, indices: np.ndarray) -> np.ndarray:
        if self.store is not None:
            return np.asarray(self.store[np.asarray(indices)])
        return np.stack([self._load(int(i)) for i in np.asarray(indices)])


def prepare_png_folder(
    folder: str | os.PathLike, factor_sizes: tuple[int, ...], image_size: int, *, progress: bool = True
) -> Path:
    """Decode (and downsample) every PNG of `folder` once into its store (`store_path`): uint8
    (N, image_size, image_size, 3), written to a temporary file and renamed into place, so a store
    is complete or absent. `PngFolderSource` then reads frames from it. Returns the store's path."""
    source = PngFolderSource(folder, factor_sizes, image_size)
    target = store_path(source.folder, image_size)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(source), image_size, image_size, 3))
    try:
        for i in tqdm(range(len(source)), desc=f"prepare {source.folder.name}", unit="img", disable=not progress):
            out[i] = source._load(i)
        out.flush()
        del out
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


class ProceduralShapes:
    """A deterministic renderer with Shapes3D's six factors and value counts, 64×64 RGB.

    floor hue, wall hue, object hue (10 each), scale (8), shape (4: cube, cylinder, sphere,
    capsule), orientation (15: the camera turns, moving the wall corner, and the object turns).
    """

    def __init__(self, image_size: int = 64):
        self.factor_sizes = FACTOR_SIZES["procedural-shapes"]
        self.image_size = image_size
        s = image_size
        self._y, self._x = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32), indexing="ij")

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    @staticmethod
    def _colour(hue_index: int, value: float = 0.9) -> np.ndarray:
        hsv = np.array([2 * np.pi * hue_index / 10, 0.8, value], np.float64).reshape(3, 1, 1)
        return hsv_to_rgb(hsv)[:, 0, 0]

    def render(self, factors: np.ndarray) -> np.ndarray:
        floor, wall, obj, scale, shape, orient = (int(v) for v in factors)
        s, x, y = self.image_size, self._x, self._y
        angle = np.deg2rad(-30.0 + 60.0 * orient / 14)
        horizon, corner = 0.6 * s, s / 2 + 0.4 * s * np.sin(angle)
        img = np.empty((s, s, 3), np.float32)
        wall_rgb = self._colour(wall)
        img[:] = np.where((x < corner)[..., None], wall_rgb, 0.75 * wall_rgb)
        shade = 0.7 + 0.3 * (y - horizon) / (s - horizon)
        img = np.where((y >= horizon)[..., None], self._colour(floor)[None, None] * shade[..., None], img)
        r = s * (0.08 + 0.08 * scale / 7)
        cx, cy = s / 2, 0.72 * s
        u = np.cos(angle) * (x - cx) + np.sin(angle) * (y - cy)
        v = -np.sin(angle) * (x - cx) + np.cos(angle) * (y - cy)
        if shape == 0:
            mask = (np.abs(u) < r) & (np.abs(v) < r)
        elif shape == 1:
            mask = (np.abs(u) < 0.7 * r) & (np.abs(v) < 1.3 * r)
        elif shape == 2:
            mask = u**2 + v**2 < r**2
        else:
            mask = u**2 + np.maximum(np.abs(v) - 0.8 * r, 0) ** 2 < (0.6 * r) ** 2
        light = 0.75 + 0.25 * np.clip(-u / (1.3 * r), -1, 1)
        img = np.where(mask[..., None], self._colour(obj)[None, None] * light[..., None], img)
        return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    def images(self, indices: np.ndarray) -> np.ndarray:
        factors = np.stack(np.unravel_index(np.asarray(indices), self.factor_sizes), axis=-1)
        return np.stack([self.render(f) for f in factors])
