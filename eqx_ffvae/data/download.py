"""Verified, resumable, atomic downloads of the datasets: MNIST's IDX files and Shapes3D's
`3dshapes.h5` (DeepMind's bucket). Nothing else in the package touches the network.

A download streams into `.<name>.part` next to its target; an interrupted one resumes from the bytes
already there (an HTTP Range request; a server that ignores it sends the whole file, which then
starts over). The file is renamed to its name only after its size and checksum match, so a name that
exists is a verified file.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

SHAPES3D_URL = "https://storage.googleapis.com/3d-shapes/3dshapes.h5"
# The object's MD5 as Google Cloud Storage publishes it (its md5Hash), and its size.
SHAPES3D_MD5 = "099a2078d58cec4daad0702c55d06868"
SHAPES3D_BYTES = 267_573_662


@dataclass(frozen=True)
class Expected:
    """What a downloaded file must be: its checksum (`algorithm`: any `hashlib` name) and, if known,
    its size in bytes."""

    digest: str
    algorithm: str = "sha256"
    size: int | None = None


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, expected: Expected) -> bool:
    """`path` exists with the expected size and checksum."""
    if not path.is_file() or (expected.size is not None and path.stat().st_size != expected.size):
        return False
    return file_digest(path, expected.algorithm) == expected.digest


def fetch(
    url: str, target: str | os.PathLike, expected: Expected, *, timeout: float = 60.0, progress: bool = True
) -> Path:
    """Download `url` to `target`, verified against `expected`; resumes a partial download.

    Returns `target` (untouched if it already verifies). Raises `ValueError` naming the URL, the
    expected and the received checksum (or size) on a mismatch, after deleting the partial file (so
    the next attempt starts clean); network errors propagate with the partial file kept for resuming.
    """
    target = Path(target)
    if verified(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    have = part.stat().st_size if part.exists() else 0
    if expected.size is not None and have > expected.size:
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: the range starts at the end, i.e. the part file is complete
            raise
        response = None
    if response is not None:
        with response:
            resumed = response.status == 206
            length = response.headers.get("Content-Length")
            total = (have if resumed else 0) + int(length) if length else expected.size
            with (
                open(part, "ab" if resumed else "wb") as out,
                tqdm(
                    total=total,
                    initial=have if resumed else 0,
                    unit="B",
                    unit_scale=True,
                    desc=target.name,
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    size = part.stat().st_size
    if expected.size is not None and size != expected.size:
        part.unlink()
        raise ValueError(f"{url}: received {size} bytes, expected {expected.size}; deleted the partial file, try again")
    got = file_digest(part, expected.algorithm)
    if got != expected.digest:
        part.unlink()
        raise ValueError(
            f"{url}: {expected.algorithm} {got}, expected {expected.digest}; deleted the download, try again "
            "(or another mirror)"
        )
    os.replace(part, target)
    return target


def download_shapes3d(
    data_dir: str | os.PathLike,
    *,
    url: str | None = None,
    expected: Expected | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """`<data_dir>/3dshapes.h5` (DeepMind's 480,000 images, 255 MiB), downloaded from `url` (default
    `SHAPES3D_URL`) if not there, checked against `expected` (default: the MD5 and size its bucket
    publishes). Returns `data_dir`, ready for `--data-dir`."""
    url = SHAPES3D_URL if url is None else url
    expected = Expected(SHAPES3D_MD5, "md5", SHAPES3D_BYTES) if expected is None else expected
    fetch(url, Path(data_dir) / "3dshapes.h5", expected, timeout=timeout, progress=progress)
    return Path(data_dir)
