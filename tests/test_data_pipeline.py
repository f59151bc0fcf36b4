"""Grain sequence pipelines: structure, factor sweeps, determinism, resumption, sharding, bad input."""

import functools
import gzip
import hashlib
import http.server
import math
import os
import threading

import h5py
import numpy as np
import pytest
from PIL import Image

from eqx_ffvae import data
from eqx_ffvae.data import download
from eqx_ffvae.data.factors import PngFolderSource
from eqx_ffvae.data.mnist import download_mnist

SHAPES_SIZES = (3, 3, 3, 3, 2, 3)


@pytest.fixture(scope="module")
def shapes_h5(tmp_path_factory):
    """A reduced 3dshapes.h5 with the real dataset names; labels are the factor values."""
    path = tmp_path_factory.mktemp("shapes") / "3dshapes.h5"
    n = math.prod(SHAPES_SIZES)
    factors = np.stack(np.unravel_index(np.arange(n), SHAPES_SIZES), axis=-1)
    images = np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = factors.astype(np.float64) / 10
    return path


def _write_png_grid(folder, sizes, px):
    """PNGs in row-major factor order; pixel block i of each image holds factor i's value."""
    folder.mkdir(parents=True, exist_ok=True)
    n = math.prod(sizes)
    for idx in range(n):
        img = np.zeros((px, px, 3), np.uint8)
        for i, v in enumerate(np.unravel_index(idx, sizes)):
            img[: px // 8, i * (px // 16) : (i + 1) * (px // 16)] = 40 * (v + 1)
        Image.fromarray(img).save(folder / f"{idx:06d}.png")
    return folder


def _decode_factors(frame, num_factors):
    px = frame.shape[-1]
    return [int(round(frame[0, 2, i * (px // 16) + 2] * 255 / 40)) - 1 for i in range(num_factors)]


FALCOR_SIZES = (2, 2, 2, 2, 2, 2, 2)
ISAAC_SIZES = (1, 2, 2, 2, 2, 2, 2, 2, 2)


@pytest.fixture(scope="module")
def falcor_dir(tmp_path_factory):
    return _write_png_grid(tmp_path_factory.mktemp("falcor") / "images", FALCOR_SIZES, 256).parent


@pytest.fixture(scope="module")
def isaac_dir(tmp_path_factory):
    return _write_png_grid(tmp_path_factory.mktemp("isaac"), ISAAC_SIZES, 128)


def test_mnist_sequences(getkey):
    ds = data.sequence_dataset("mnist", seed=3)
    images, _ = data.load_embedded_mnist()
    ks = set()
    for i in range(12):
        el = ds[i]
        assert el["frames"].shape == (9, 3, 28, 28) and el["frames"].dtype == np.float32
        assert 0 <= el["frames"].min() and el["frames"].max() <= 1
        np.testing.assert_allclose(el["frames"][0], data.colourise(images[el["index"]] / 255.0), atol=1e-6)
        np.testing.assert_allclose(
            el["frames"][5], data.apply_transform("mnist", el["frames"][0], int(el["k"]), 5), atol=1e-6
        )
        ks.add(int(el["k"]))
    assert ks == {0, 1, 2}
    fixed = data.sequence_dataset("mnist", seed=3, k=2)
    assert all(int(fixed[i]["k"]) == 2 for i in range(5))


def test_mnist_split_is_disjoint():
    train, test = (set(data.split_indices(5000, split).tolist()) for split in ("train", "test"))
    assert len(train) == 4500 and len(test) == 500 and not train & test
    test_ds = data.sequence_dataset("mnist", split="test", seed=9)
    assert len(test_ds) == 500
    assert {int(test_ds[i]["index"]) for i in range(500)} == test
    assert len(data.sequence_dataset("mnist", split="train")) == 4500


def test_validation_split_is_carved_from_train_only():
    """Three disjoint parts covering everything; the test split never changes, and without a
    validation split the train split is the two-way partition's."""
    parts = {split: set(data.split_indices(5000, split, validation_fraction=0.1).tolist()) for split in data.SPLITS}
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [4000, 500, 500]
    assert not (
        parts["train"] & parts["validation"] or parts["train"] & parts["test"] or parts["validation"] & parts["test"]
    )
    assert parts["train"] | parts["validation"] | parts["test"] == set(range(5000))
    assert parts["test"] == set(data.split_indices(5000, "test").tolist())
    assert parts["train"] | parts["validation"] == set(data.split_indices(5000, "train").tolist())
    val = data.sequence_dataset("mnist", split="validation", validation_fraction=0.1, seed=2)
    assert {int(val[i]["index"]) for i in range(len(val))} == parts["validation"]
    with pytest.raises(ValueError, match="validation split is empty.*--validation-fraction"):
        data.sequence_dataset("mnist", split="validation")
    with pytest.raises(ValueError, match=r"split must be one of .*'validation'.*got 'val'"):
        data.split_indices(10, "val")


def test_shapes3d_frames_differ_in_factor_k_alone(shapes_h5):
    ds = data.sequence_dataset("shapes3d", data_dir=shapes_h5.parent, factor_sizes=SHAPES_SIZES, num_frames=3)
    source = data.Shapes3DSource(shapes_h5, SHAPES_SIZES)
    flow_factors = data.DATASETS["shapes3d"].flow_factors
    seen = set()
    for i in range(40):
        el = ds[i]
        assert el["frames"].shape == (3, 3, 64, 64)
        labels = source.labels(el["index"])
        changed = np.flatnonzero(np.any(labels != labels[0], axis=0))
        factor = flow_factors[int(el["k"])]
        assert list(changed) == [factor]
        assert np.all(np.diff(labels[:, factor]) > 0)
        expected = source.images(el["index"]).transpose(0, 3, 1, 2) / 255.0
        np.testing.assert_allclose(el["frames"], expected, atol=1e-6)
        seen.add(factor)
    assert seen == set(flow_factors)
    assert 4 not in seen, "shape is never a flow"


@pytest.mark.parametrize("name", ["falcor3d", "isaac3d"])
def test_png_datasets_frames_differ_in_factor_k_alone(request, name):
    folder = request.getfixturevalue("falcor_dir" if name == "falcor3d" else "isaac_dir")
    sizes = FALCOR_SIZES if name == "falcor3d" else ISAAC_SIZES
    ds = data.sequence_dataset(name, data_dir=folder, factor_sizes=sizes, num_frames=2)
    info = data.DATASETS[name]
    for i in range(20):
        el = ds[i]
        assert el["frames"].shape == (2, 3, 128, 128)
        decoded = np.array([_decode_factors(f, len(sizes)) for f in el["frames"]])
        np.testing.assert_array_equal(decoded, el["factors"])
        changed = np.flatnonzero(np.any(decoded != decoded[0], axis=0))
        assert list(changed) == [info.flow_factors[int(el["k"])]]


def test_procedural_shapes_each_factor_changes_the_image():
    source = data.ProceduralShapes()
    base = np.array([3, 5, 7, 4, 1, 7])
    ref = source.render(base)
    for f, size in enumerate(source.factor_sizes):
        other = base.copy()
        other[f] = (base[f] + 2) % size
        diff = np.abs(source.render(other).astype(int) - ref).sum(-1) > 0
        assert diff.mean() > 0.003, f"factor {f} hardly changes the image"
    ds = data.sequence_dataset("procedural-shapes", seed=0)
    el = ds[0]
    assert el["frames"].shape == (8, 3, 64, 64)
    changed = np.flatnonzero(np.any(el["factors"] != el["factors"][0], axis=0))
    assert list(changed) == [data.DATASETS["shapes3d"].flow_factors[int(el["k"])]]


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_same_seed_same_batches_other_seed_other_batches():
    make = lambda seed: data.batch_iterator(data.sequence_dataset("mnist", seed=seed, num_epochs=None), 8)  # noqa: E731
    _assert_same(_batches(make(5), 3), _batches(make(5), 3))
    assert not np.array_equal(next(make(5))["index"], next(make(6))["index"])


def test_restored_iterator_reproduces_next_batches():
    ds = data.sequence_dataset("mnist", seed=1, num_epochs=None)
    it = data.batch_iterator(ds, 16)
    _batches(it, 3)
    state = it.get_state()
    expected = _batches(it, 3)
    fresh = data.batch_iterator(ds, 16)
    fresh.set_state(state)
    _assert_same(_batches(fresh, 3), expected)


def test_epochs_reshuffle_and_cover_the_split():
    ds = data.sequence_dataset("mnist", split="test", seed=0, num_epochs=2)
    n = 500
    first = [int(ds[i]["index"]) for i in range(n)]
    second = [int(ds[n + i]["index"]) for i in range(n)]
    assert sorted(first) == sorted(second) and first != second


def test_shards_are_disjoint_and_cover_the_data():
    full = {int(data.sequence_dataset("mnist", split="test")[i]["index"]) for i in range(500)}
    shards = [data.sequence_dataset("mnist", split="test", shard_index=i, shard_count=2) for i in range(2)]
    a = {int(shards[0][i]["index"]) for i in range(len(shards[0]))}
    b = {int(shards[1][i]["index"]) for i in range(len(shards[1]))}
    assert not a & b and a | b == full


@pytest.mark.slow
def test_worker_processes_give_the_same_batches():
    ds = data.sequence_dataset("mnist", seed=2, num_epochs=None)
    _assert_same(_batches(data.batch_iterator(ds, 8, num_workers=2), 4), _batches(data.batch_iterator(ds, 8), 4))


# ---- MNIST IDX files and the verified download --------------------------------------------------


def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tiny IDX files (never the internet)."""
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": _idx_bytes(rng.integers(0, 255, (20, 28, 28))),
        "train-labels-idx1-ubyte.gz": _idx_bytes(rng.integers(0, 10, (20,))),
        "t10k-images-idx3-ubyte.gz": _idx_bytes(rng.integers(0, 255, (10, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": _idx_bytes(rng.integers(0, 10, (10,))),
    }
    for name, blob in files.items():
        (served / name).write_bytes(blob)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    checksums = {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}
    yield f"http://127.0.0.1:{server.server_address[1]}/", checksums
    server.shutdown()


def test_download_verifies_checksums_and_loads(mnist_server, tmp_path):
    url, checksums = mnist_server
    target = download_mnist(tmp_path / "mnist", mirrors=(url,), files=checksums)
    images, labels = data.load_mnist_idx(target, "train")
    assert images.shape == (20, 28, 28) and labels.shape == (20,)
    ds = data.sequence_dataset("mnist", data_dir=target, split="test")
    assert len(ds) == 10 and ds[0]["frames"].shape == (9, 3, 28, 28)


def test_download_with_bad_checksum_leaves_no_file(mnist_server, tmp_path):
    url, checksums = mnist_server
    bad = {**checksums, "train-labels-idx1-ubyte.gz": "0" * 64}
    folder = tmp_path / "mnist"
    with pytest.raises(RuntimeError, match="sha256 .*, expected 0{64}"):
        download_mnist(folder, mirrors=(url,), files=bad)
    assert not (folder / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in os.listdir(folder) if p.endswith(".part")]


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `files` (name → bytes), honouring `Range: bytes=N-` (206) when `ranges` is on; logs the
    Range header of every request in `seen`."""

    files: dict = {}
    ranges = True
    seen: list = []

    def do_GET(self):
        blob = self.files.get(self.path.lstrip("/"))
        if blob is None:
            self.send_error(404)
            return
        header = self.headers.get("Range")
        self.seen.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header and self.ranges else 0
        if start >= len(blob) and header and self.ranges:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(blob) - start))
        self.end_headers()
        self.wfile.write(blob[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def range_server():
    """(base URL, handler class) of a local server on 127.0.0.1; tests set the handler's files."""
    handler = type("Handler", (_RangeHandler,), {"files": {}, "seen": [], "ranges": True})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", handler
    server.shutdown()


@pytest.mark.parametrize("ranges", [True, False])
def test_an_interrupted_download_resumes_or_starts_over(range_server, tmp_path, ranges):
    """A partial file is continued with a Range request; a server that ignores Range sends the whole
    file and the download starts over. Either way the result is the file, verified, and no part file."""
    url, handler = range_server
    blob = np.random.default_rng(1).bytes(300_000)
    handler.files, handler.ranges = {"f.bin": blob}, ranges
    target = tmp_path / "f.bin"
    (tmp_path / ".f.bin.part").write_bytes(blob[:120_000])
    expected = download.Expected(hashlib.sha256(blob).hexdigest(), size=len(blob))
    assert download.fetch(url + "f.bin", target, expected, progress=False) == target
    assert target.read_bytes() == blob and not (tmp_path / ".f.bin.part").exists()
    assert handler.seen == ["bytes=120000-"]
    download.fetch(url + "f.bin", target, expected, progress=False)  # already there: no request
    assert handler.seen == ["bytes=120000-"]


def test_a_corrupt_partial_download_is_refused_and_removed(range_server, tmp_path):
    url, handler = range_server
    blob = np.random.default_rng(2).bytes(50_000)
    handler.files = {"f.bin": blob}
    (tmp_path / ".f.bin.part").write_bytes(b"x" * 10_000)  # not the file's first bytes
    expected = download.Expected(hashlib.sha256(blob).hexdigest(), size=len(blob))
    with pytest.raises(ValueError, match=r"f\.bin: sha256 [0-9a-f]{64}, expected " + expected.digest):
        download.fetch(url + "f.bin", tmp_path / "f.bin", expected, progress=False)
    assert not list(tmp_path.iterdir())
    download.fetch(url + "f.bin", tmp_path / "f.bin", expected, progress=False)  # the next try starts clean
    assert (tmp_path / "f.bin").read_bytes() == blob


def test_download_shapes3d_checks_md5_and_size_and_loads(range_server, shapes_h5, tmp_path):
    url, handler = range_server
    blob = shapes_h5.read_bytes()
    handler.files = {"3dshapes.h5": blob}
    md5 = hashlib.md5(blob).hexdigest()
    with pytest.raises(ValueError, match=f"received {len(blob)} bytes, expected {len(blob) + 1}"):
        download.download_shapes3d(
            tmp_path / "bad",
            url=url + "3dshapes.h5",
            expected=download.Expected(md5, "md5", len(blob) + 1),
            progress=False,
        )
    folder = download.download_shapes3d(
        tmp_path / "shapes", url=url + "3dshapes.h5", expected=download.Expected(md5, "md5", len(blob)), progress=False
    )
    ds = data.sequence_dataset("shapes3d", data_dir=folder, factor_sizes=SHAPES_SIZES, num_frames=3)
    assert ds[0]["frames"].shape == (3, 3, 64, 64)


def test_download_command_fetches_and_verifies_both_datasets(
    mnist_server, range_server, shapes_h5, tmp_path, monkeypatch, capsys
):
    """`run.py download mnist|shapes3d --data-dir D --url U`: the published checksums are replaced by
    the served files' (the files are tiny stand-ins); a checksum that does not match fails loudly."""
    from eqx_ffvae import cli
    from eqx_ffvae.data import mnist

    mnist_url, checksums = mnist_server
    monkeypatch.setattr(mnist, "MNIST_FILES", checksums)
    assert cli.main(["download", "mnist", "--data-dir", str(tmp_path / "m"), "--url", mnist_url]) == 0
    assert "--preset mnist --data-dir" in capsys.readouterr().out
    assert data.load_mnist_idx(tmp_path / "m", "test")[0].shape == (10, 28, 28)

    url, handler = range_server
    blob = shapes_h5.read_bytes()
    handler.files = {"3dshapes.h5": blob}
    args = ["download", "shapes3d", "--data-dir", str(tmp_path / "s"), "--url", url + "3dshapes.h5"]
    assert cli.main(args) == 1  # the real MD5 and size do not match the stand-in
    err = capsys.readouterr().err
    assert f"expected {download.SHAPES3D_BYTES}" in err and "run the same command again" in err
    assert not (tmp_path / "s" / "3dshapes.h5").exists()
    monkeypatch.setattr(download, "SHAPES3D_MD5", hashlib.md5(blob).hexdigest())
    monkeypatch.setattr(download, "SHAPES3D_BYTES", len(blob))
    assert cli.main(args) == 0
    assert (tmp_path / "s" / "3dshapes.h5").read_bytes() == blob


# ---- bad input: one clear error naming the path and what was expected ---------------------------


def test_missing_directories_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.sequence_dataset("mnist", data_dir=missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.sequence_dataset("falcor3d", data_dir=missing)
    with pytest.raises(FileNotFoundError, match="3dshapes.h5"):
        data.sequence_dataset("shapes3d", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        data.sequence_dataset("isaac3d")
    with pytest.raises(ValueError, match="'cifar'"):
        data.sequence_dataset("cifar")


def test_h5_without_images_is_named(tmp_path):
    path = tmp_path / "3dshapes.h5"
    with h5py.File(path, "w") as f:
        f["labels"] = np.zeros((10, 6))
    with pytest.raises(ValueError, match=r"3dshapes.h5.*'images'"):
        data.Shapes3DSource(path)


def test_png_count_size_and_mode_are_checked(tmp_path):
    folder = _write_png_grid(tmp_path / "few", (2, 2), 128)
    with pytest.raises(ValueError, match=r"few.*4 images.*\(2, 2, 2\) needs 8"):
        PngFolderSource(folder, (2, 2, 2))
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(small / "0.png")
    with pytest.raises(ValueError, match=r"0.png is 64×64"):
        PngFolderSource(small, (1,))
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(grey / "0.png")
    with pytest.raises(ValueError, match=r"0.png has mode L"):
        PngFolderSource(grey, (1,))


def test_a_prepared_store_gives_the_same_frames_as_the_pngs(tmp_path):
    """`train/run.py prepare` decodes (and downsamples, 256 → 128 px) every PNG once; sequences read
    from the store equal those decoded from the PNGs (which are blanked to show the store is what is
    read), and a store of another size is refused by name."""
    folder = _write_png_grid(tmp_path / "falcor" / "images", FALCOR_SIZES, 256).parent
    from_pngs = data.sequence_dataset("falcor3d", data_dir=folder, factor_sizes=FALCOR_SIZES, num_frames=2, seed=4)
    expected = [from_pngs[i] for i in range(6)]
    # the CLI prepares with the preset's grid; the fixture's is smaller, so call the library for it
    from eqx_ffvae.data.factors import prepare_png_folder, store_path

    store = prepare_png_folder(folder, FALCOR_SIZES, 128, progress=False)
    assert store == store_path(folder / "images", 128) and store.exists()
    assert not list(store.parent.glob(".*partial"))
    for png in (folder / "images").glob("*.png"):  # the store is read, not the PNGs: blank them
        Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(png)
    from_store = data.sequence_dataset("falcor3d", data_dir=folder, factor_sizes=FALCOR_SIZES, num_frames=2, seed=4)
    for want, got in zip(expected, (from_store[i] for i in range(6)), strict=True):
        np.testing.assert_array_equal(got["frames"], want["frames"])
        np.testing.assert_array_equal(got["index"], want["index"])
    np.save(store, np.zeros((3, 128, 128, 3), np.uint8))
    with pytest.raises(ValueError, match=str(store.name)):
        data.sequence_dataset("falcor3d", data_dir=folder, factor_sizes=FALCOR_SIZES, num_frames=2)
