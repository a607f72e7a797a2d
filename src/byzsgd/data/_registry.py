"""The data set registry: loaders by name.

A loader is a function ``(data_dir, download) -> Dataset``; registered under a name with
:func:`register` (a decorator, applied in the loader's own module: the library's data sets
register the same way), it is what ``data.load(name)`` and the config field
``dataset = "name"`` use. ``data_dir`` is where file-based sets look for (and download) their
files, ``download`` whether a missing file may be downloaded; loaders that need neither ignore
them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from byzsgd._names import Registry, origin
from byzsgd.data._dataset import Dataset

PathLike = str | os.PathLike[str] | None
Loader = Callable[[PathLike, bool], Dataset]


@dataclass(frozen=True)
class DataSpec:
    """A registered data set: its loader and one-line summary."""

    name: str
    loader: Loader
    summary: str

    @property
    def origin(self) -> str:
        """Where the loader is defined (``module.qualname``), for messages and records."""
        return origin(self.loader)


_REGISTRY: Registry[DataSpec] = Registry("data set", "data")
_SPECS = _REGISTRY.specs
#: name -> one-line summary of every registered data set (kept in step with the registry).
DESCRIPTIONS = _REGISTRY.descriptions


def register(name: str, *, summary: str, replace: bool = False) -> Callable[[Loader], Loader]:
    """Register the decorated loader ``(data_dir, download) -> Dataset`` as data set
    ``name``; returns the loader unchanged. A name already registered raises ``ValueError``
    naming its registrant, unless ``replace=True``.

    Example::

        from byzsgd import data

        @data.register("my-tabular", summary="20 features, 3 classes, from my CSV")
        def my_tabular(data_dir, download):
            x, y = read_my_csv()
            return data.Dataset.from_tensors(x[:2000], y[:2000], x[2000:], y[2000:],
                                             name="my-tabular")
    """
    _REGISTRY.check_entry(name, summary)

    def decorate(loader: Loader) -> Loader:
        _REGISTRY.check_callable(name, loader, "loader (data_dir, download) -> Dataset")
        _REGISTRY.add(DataSpec(name, loader, summary), replace=replace)
        return loader

    return decorate


def names() -> list[str]:
    """The names :func:`load` accepts, in registration order."""
    return _REGISTRY.names()


def spec(name: str) -> DataSpec:
    """The registration of data set ``name``."""
    return _REGISTRY.spec(name)


def describe(name: str) -> str:
    """A one-line description of data set ``name``."""
    return _REGISTRY.describe(name)


def load(name: str, data_dir: PathLike = None, download: bool = True) -> Dataset:
    """Load data set ``name`` (see :func:`names`).

    ``data_dir`` and ``download`` only matter for the file-based sets (mnist,
    fashion-mnist, cifar10): where to look for (and put downloaded) files, and whether a
    missing file may be downloaded. A set that can be neither found nor downloaded raises
    :class:`~byzsgd.data.DataUnavailableError` saying where to put which files. A loader that
    returns something other than a :class:`Dataset`, or a data set whose tensors are
    malformed (e.g. labels outside its classes), raises ``ValueError`` naming the data set.
    """
    s = spec(name)
    try:
        dataset = s.loader(data_dir, download)
    except ValueError as e:
        # Name the data set in a plain ValueError that does not (subclasses keep their type)
        if type(e) is not ValueError or repr(name) in str(e) or str(e).startswith(f"{name}:"):
            raise
        raise ValueError(f"data set {name!r} ({s.origin}): {e}") from None
    if not isinstance(dataset, Dataset):
        raise ValueError(f"data set {name!r}: its loader {s.origin} returned "
                         f"{type(dataset).__name__}, not a byzsgd.data.Dataset (build one "
                         f"with Dataset.from_tensors(x_train, y_train, x_test, y_test))")
    return dataset
