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
        f = self.loader
        return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


_SPECS: dict[str, DataSpec] = {}
#: name -> one-line summary of every registered data set (kept in step with the registry).
DESCRIPTIONS: dict[str, str] = {}


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
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"data.register: name must be a non-empty string without "
                         f"surrounding spaces, got {name!r}")
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary:
        raise ValueError(f"data.register({name!r}): summary must be one non-empty line, "
                         f"got {summary!r}")

    def decorate(loader: Loader) -> Loader:
        if not callable(loader):
            raise TypeError(f"data.register({name!r}) decorates a loader "
                            f"(data_dir, download) -> Dataset, got {loader!r}")
        spec = DataSpec(name, loader, summary)
        if name in _SPECS and not replace:
            raise ValueError(f"data set {name!r} is already registered by "
                             f"{_SPECS[name].origin}; choose another name or pass "
                             f"replace=True")
        _SPECS[name] = spec
        DESCRIPTIONS[name] = summary
        return loader

    return decorate


def names() -> list[str]:
    """The names :func:`load` accepts, in registration order."""
    return list(_SPECS)


def spec(name: str) -> DataSpec:
    """The registration of data set ``name``."""
    if name not in _SPECS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(_SPECS)}")
    return _SPECS[name]


def describe(name: str) -> str:
    """A one-line description of data set ``name``."""
    return spec(name).summary


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
