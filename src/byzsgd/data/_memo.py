"""A process-local cache of loaded data sets, so that a process running many runs (a worker of
``byzsgd sweep`` / ``byzsgd reproduce --jobs N``, which runs hundreds) parses its files once.

Loading full MNIST costs ~0.2 CPU-s a run (the parsed arrays read back from the ``.npz`` cache
of :mod:`._files`, then converted to float32); the field grid's runs train for ~0.3 CPU-s.

An entry is keyed by the data set, its data directory and its source files' resolved paths,
sizes and modification times (:func:`._files.fingerprint`, taken anew at every load), so a
replaced or edited file is loaded again. At most :data:`SIZE` entries are kept (the least
recently used one is dropped). The cached tensors are shared by the runs, which only read
them: each entry records the tensors' version counters (which every in-place torch operation
on a tensor or a view of it bumps), and an entry whose tensors were written since is dropped
and loaded again, so that a run never sees another run's writes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from byzsgd.data._dataset import Dataset
from byzsgd.data._files import cached_arrays, fingerprint

logger = logging.getLogger("byzsgd.data")

#: How many data sets a process keeps.
SIZE = 2


@dataclass
class Stats:
    """Counts of this process's loads through the cache (for tests and profiles)."""

    hits: int = 0
    misses: int = 0
    #: Entries dropped because a run had written into their tensors.
    written: int = 0


stats = Stats()
_entries: OrderedDict[tuple[str, str, str], tuple[Dataset, tuple[int, ...]]] = OrderedDict()
_lock = threading.Lock()


def _versions(ds: Dataset) -> tuple[int, ...]:
    return tuple(t._version for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))


def loaded(tag: str, root: str | os.PathLike[str], sources: Sequence[Path],
           load: Callable[[], Dataset]) -> Dataset:
    """``load()``, or the data set an earlier call of this process loaded from the same,
    unchanged ``sources`` (the files ``load`` reads) for data set ``tag`` in data directory
    ``root``; see the module docstring. The result must only be read."""
    key = (tag, str(Path(root).expanduser().resolve()), fingerprint([Path(p) for p in sources]))
    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            ds, versions = entry
            if _versions(ds) == versions:
                _entries.move_to_end(key)
                stats.hits += 1
                return ds
            logger.warning("data set %s: a run wrote into the cached tensors; loading it "
                           "again", tag)
            stats.written += 1
            del _entries[key]
        stats.misses += 1
        ds = load()
        _entries[key] = (ds, _versions(ds))
        while len(_entries) > SIZE:
            _entries.popitem(last=False)
        return ds


def parsed(tag: str, root: str | os.PathLike[str], sources: Sequence[Path],
           parse: Callable[[], dict], num_classes: int) -> Dataset:
    """:func:`loaded` of the data set ``tag`` whose arrays ``parse()`` reads from ``sources``
    (through the ``.npz`` cache of :func:`._files.cached_arrays`): what each file-backed loader
    returns. Its tensors are shared by the runs of this process: read them only."""
    return loaded(tag, root, sources,
                  lambda: Dataset.from_arrays(tag, cached_arrays(tag, sources, parse), num_classes))


def clear() -> None:
    """Forget every cached data set (and reset :data:`stats`)."""
    with _lock:
        _entries.clear()
        stats.hits = stats.misses = stats.written = 0
