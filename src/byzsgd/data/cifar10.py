"""CIFAR-10 from the standard python-pickle distribution.

The archive ``cifar-10-python.tar.gz`` (Krizhevsky, 2009) holds a directory
``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5`` (50,000 training images)
and ``test_batch`` (10,000 test images); each is a pickled dict with ``b'data'``, a uint8
array of shape (N, 3072) holding the red, green then blue 32x32 planes of each image, and
``b'labels'``, a list of N ints in 0-9.

Looked for in ``<data dir>`` and ``<data dir>/cifar10``, extracted (the directory) or not (the
archive, read in place). When missing, the archive is downloaded into ``<data dir>/cifar10/``
and checked against its published md5. The pickles are read with an unpickler that only
accepts numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byzsgd.data._dataset import Dataset
from byzsgd.data._download import Checksum, DownloadError, fetch
from byzsgd.data._files import DataUnavailableError, data_root
from byzsgd.data._memo import parsed
from byzsgd.data._registry import register

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SUBDIR = "cifar10"


@dataclass(frozen=True)
class CifarSource:
    """Where the archive is downloaded from; tests replace it to use a local server."""

    mirrors: tuple[str, ...]
    checksum: Checksum | None


SOURCE = CifarSource(
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    checksum=Checksum("md5", "c58f30108f718f92721af3b95e74349a"),
)

# The callables a numpy array's pickle refers to, taken from numpy itself so that both the
# numpy 1.x module path (numpy.core.multiarray) and the 2.x one (numpy._core.multiarray)
# resolve without importing a deprecated module.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.uint8(0).__reduce__()[0]
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(_module, "scalar")] = _SCALAR


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1"); allow exactly
    # that (any other codec, e.g. a decompressing one, is refused).
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"CIFAR-10 batch uses codec {encoding!r}")
    return codecs.encode(text, encoding, errors)


_ALLOWED[("_codecs", "encode")] = _latin1_encode


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"CIFAR-10 batch refers to {module}.{name}; only numpy arrays are allowed"
            ) from None


def _decode_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        # The batches were pickled by Python 2: encoding="bytes" keeps the keys as bytes.
        batch = _ArraysOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"{source}: not a CIFAR-10 python batch ({err})") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{source}: expected a pickled dict, got {type(batch).__name__}")
    # Accept str keys too (a batch re-pickled by Python 3 with latin1 decoding).
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{source}: batch lacks 'data' or 'labels' (has {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{source}: 'data' must be uint8 of shape (N, 3072), "
                         f"got {data.dtype} of shape {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source}: 'labels' must be {data.shape[0]} ints, "
                         f"got {labels.dtype} of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_members(location: Path) -> dict[str, bytes]:
    """The six batch files' bytes, from the extracted directory or the archive."""
    names = (*TRAIN_BATCHES, TEST_BATCH)
    if location.is_dir():
        return {name: (location / name).read_bytes() for name in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(location, "r:*") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in names and base not in out:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        out[base] = handle.read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"{location}: unreadable CIFAR-10 archive ({err})") from err
    absent = [n for n in names if n not in out]
    if absent:
        raise ValueError(f"{location}: archive lacks {', '.join(absent)}")
    return out


def _parse(location: Path) -> dict[str, np.ndarray]:
    raw = _read_members(location)
    train = [_decode_batch(raw[name], f"{location}/{name}") for name in TRAIN_BATCHES]
    x_test, y_test = _decode_batch(raw[TEST_BATCH], f"{location}/{TEST_BATCH}")
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def locate(data_dir: str | os.PathLike[str] | None = None, download: bool = True,
           source: CifarSource | None = None) -> Path:
    """The extracted batch directory or the archive, downloading the archive if allowed."""
    source = SOURCE if source is None else source
    root = data_root(data_dir)
    dirs = [root, root / SUBDIR]
    for directory in dirs:
        folder = directory / FOLDER
        if all((folder / n).is_file() for n in (*TRAIN_BATCHES, TEST_BATCH)):
            return folder
        if (directory / ARCHIVE).is_file():
            return directory / ARCHIVE
    where = " or ".join(str(d) for d in dirs)
    hint = (f"cifar10: not found. Put {ARCHIVE}, or its extracted {FOLDER}/ directory "
            f"(data_batch_1 ... data_batch_5, test_batch), in {where}, or point data_dir= or "
            f"the BYZSGD_DATA_DIR environment variable at a directory that holds it "
            f"(directly or in {SUBDIR}/).")
    if not download:
        raise DataUnavailableError(hint + " (download=False)")
    try:
        return fetch(ARCHIVE, source.mirrors, root / SUBDIR, source.checksum)
    except DownloadError as err:
        raise DataUnavailableError(f"{hint} Download failed: {err}") from err


@register("cifar10", summary="CIFAR-10 colour images, 50,000 train / 10,000 test, 3x32x32, "
          "10 classes (cifar-10-python.tar.gz from the data dir, else downloaded)")
def load(data_dir: str | os.PathLike[str] | None = None, download: bool = True,
         source: CifarSource | None = None) -> Dataset:
    """Load CIFAR-10 (see the module docstring): 50,000 + 10,000 images of shape (3, 32, 32)."""
    location = locate(data_dir, download, source)
    sources = ([location / n for n in (*TRAIN_BATCHES, TEST_BATCH)] if location.is_dir()
               else [location])
    # a sweep's worker that loads it again gets the same tensors: read them only
    return parsed("cifar10", data_root(data_dir), sources, lambda: _parse(location), 10)
