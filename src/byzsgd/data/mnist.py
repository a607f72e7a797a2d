"""MNIST and Fashion-MNIST from their standard IDX files.

Both data sets ship as the same four files (60,000 training and 10,000 test 28x28 grayscale
images, labels 0-9), gzip-compressed or not:

    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

MNIST is looked for in ``<data dir>`` and ``<data dir>/mnist``; Fashion-MNIST, whose file
names are the same, only in ``<data dir>/fashion-mnist``. Missing files are downloaded (when
allowed) into ``<data dir>/<subdir>/`` from the mirrors below, in order, each download checked
against a checksum:

* MNIST: sha256 of the *uncompressed* files. Mirrors (and local copies) recompress the
  ``.gz`` files differently, but the uncompressed bytes are LeCun's originals everywhere.
* Fashion-MNIST: md5 of the ``.gz`` files as published by Zalando Research in the
  fashion-mnist README (the same values torchvision checks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from byzsgd.data._dataset import Dataset
from byzsgd.data._download import Checksum, DownloadError, fetch
from byzsgd.data._files import DataUnavailableError, data_root, find_file
from byzsgd.data._memo import parsed
from byzsgd.data._registry import register
from byzsgd.data.idx import read_idx

#: The four IDX files, by role, without the ``.gz`` suffix.
FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxSource:
    """Where an IDX image data set is found and fetched from.

    ``checksums`` maps the remote file name (``<file>.gz``) to its expected checksum; a file
    without an entry is accepted unchecked. Tests replace ``mirrors`` and ``checksums`` with
    :func:`dataclasses.replace` to exercise the download path against a local server.
    """

    name: str
    subdir: str
    mirrors: tuple[str, ...]
    checksums: Mapping[str, Checksum] = field(default_factory=dict)
    search_root: bool = False  # also look directly in <data dir> (not for Fashion: same names)
    num_classes: int = 10


MNIST = IdxSource(
    name="mnist",
    subdir="mnist",
    search_root=True,
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    # sha256 of the uncompressed original files (7,840,016 / 10,008 / 47,040,016 / 60,008
    # bytes); their md5s match the widely published ones of LeCun's files.
    checksums={
        "train-images-idx3-ubyte.gz": Checksum(
            "sha256", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", True),
        "train-labels-idx1-ubyte.gz": Checksum(
            "sha256", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", True),
        "t10k-images-idx3-ubyte.gz": Checksum(
            "sha256", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", True),
        "t10k-labels-idx1-ubyte.gz": Checksum(
            "sha256", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", True),
    },
)

FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    subdir="fashion-mnist",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    # md5 of the .gz files, as published in the fashion-mnist README.
    checksums={
        "train-images-idx3-ubyte.gz": Checksum("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": Checksum("md5", "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": Checksum("md5", "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": Checksum("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    },
)


def _candidate_names(stem: str) -> list[str]:
    # Some copies use a dot before "idx" (train-images.idx3-ubyte, as unpacked on Windows).
    dotted = stem.replace("-idx", ".idx")
    return [f"{stem}.gz", stem, f"{dotted}.gz", dotted]


def _help(source: IdxSource, dirs: list[Path], missing: list[str]) -> str:
    where = " or ".join(str(d) for d in dirs)
    layout = f"directly or in {source.subdir}/" if source.search_root else f"in {source.subdir}/"
    return (f"{source.name}: missing {', '.join(missing)}. Put the four IDX files "
            f"{', '.join(FILES.values())} (each gzipped as <name>.gz or not) in {where}, "
            f"or point data_dir= or the BYZSGD_DATA_DIR environment variable at a directory "
            f"that holds them {layout}.")


def locate(source: IdxSource, data_dir: str | os.PathLike[str] | None = None,
           download_missing: bool = True) -> dict[str, Path]:
    """The path of each of the four files, downloading the missing ones when allowed."""
    root = data_root(data_dir)
    dirs = ([root] if source.search_root else []) + [root / source.subdir]
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, stem in FILES.items():
        path = find_file(dirs, _candidate_names(stem))
        if path is None:
            missing.append(stem)
        else:
            found[role] = path
    if not missing:
        return found
    if not download_missing:
        raise DataUnavailableError(_help(source, dirs, missing) + " (download=False)")
    failures: list[str] = []
    for role, stem in FILES.items():
        if stem not in missing:
            continue
        remote = f"{stem}.gz"
        try:
            found[role] = fetch(remote, source.mirrors, root / source.subdir,
                                source.checksums.get(remote))
        except DownloadError as err:
            failures.append(str(err))
    if failures:
        raise DataUnavailableError(_help(source, dirs, missing) + " Download failed: "
                                   + "\n".join(failures))
    return found


def _parse(paths: dict[str, Path], source: IdxSource) -> dict[str, np.ndarray]:
    arrays = {role: read_idx(path) for role, path in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3:
            raise ValueError(f"{source.name}: {paths[f'x_{split}']} must hold uint8 images "
                             f"of shape (N, H, W), got {x.dtype} of shape {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{source.name}: {paths[f'y_{split}']} must hold {x.shape[0]} "
                             f"labels (one per image), got shape {y.shape}")
        arrays[f"x_{split}"] = x[:, None, :, :]  # grayscale: one channel
    return arrays


def load(source: IdxSource = MNIST, data_dir: str | os.PathLike[str] | None = None,
         download: bool = True) -> Dataset:
    """Load an IDX image data set (MNIST by default); see the module docstring."""
    paths = locate(source, data_dir, download)
    ordered = [paths[role] for role in FILES]
    # a sweep's worker that loads it again gets the same tensors: read them only
    return parsed(source.name, data_root(data_dir), ordered, lambda: _parse(paths, source),
                  source.num_classes)


# Registered loaders look MNIST / FASHION_MNIST up at call time, so tests can replace them.
@register("mnist", summary="MNIST handwritten digits, 60,000 train / 10,000 test, 1x28x28, "
          "10 classes (IDX files from the data dir, else downloaded)")
def load_mnist(data_dir: str | os.PathLike[str] | None, download: bool) -> Dataset:
    return load(MNIST, data_dir, download)


@register("fashion-mnist", summary="Fashion-MNIST clothing images, 60,000 train / 10,000 "
          "test, 1x28x28, 10 classes (IDX files from <data dir>/fashion-mnist, else downloaded)")
def load_fashion_mnist(data_dir: str | os.PathLike[str] | None, download: bool) -> Dataset:
    return load(FASHION_MNIST, data_dir, download)
