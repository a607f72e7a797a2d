"""Where data files live, and a cache of parsed arrays.

Data directory resolution (the first that is set wins):

1. the ``data_dir`` argument of :func:`byzsgd.data.load`;
2. the environment variable ``BYZSGD_DATA_DIR``;
3. the user cache, ``$XDG_CACHE_HOME/byzsgd`` or ``~/.cache/byzsgd``.

Downloads go to ``<data dir>/<data set>/``. Parsed arrays are cached as ``.npz`` files under
``<user cache>/arrays/`` (never next to the data, which may be read-only), keyed by the source
files' paths and stamped with their sizes and modification times, so that a replaced or
edited source file is parsed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger("byzsgd.data")

ENV_DATA_DIR = "BYZSGD_DATA_DIR"
# Bump when the parsed-array layout changes, so that old cache entries are ignored.
_CACHE_FORMAT = 1
_FINGERPRINT = "__fingerprint__"


class DataUnavailableError(FileNotFoundError):
    """A data set's files are neither on disk nor downloadable; the message says where to put
    them and under which names."""


def cache_dir() -> Path:
    """The user cache directory of byzsgd (``$XDG_CACHE_HOME/byzsgd`` or ``~/.cache/byzsgd``)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "byzsgd"


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$BYZSGD_DATA_DIR``, else :func:`cache_dir`."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return cache_dir()


def find_file(dirs: Iterable[Path], names: Iterable[str]) -> Path | None:
    """The first ``dir / name`` that is an existing file, trying every name in each dir."""
    names = list(names)
    for directory in dirs:
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def fingerprint(sources: Sequence[Path]) -> str:
    """The sources' resolved paths, sizes and modification times (ns), as one string: what
    a cache entry built from them is stamped with."""
    stats = []
    for path in sources:
        st = path.stat()
        stats.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return json.dumps([_CACHE_FORMAT, stats])


def cached_arrays(tag: str, sources: Sequence[Path],
                  parse: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``parse()``, or its result cached from an earlier call with the same, unchanged sources.

    ``sources`` are the files (or directories' files) that ``parse`` reads. The cache entry's
    name is derived from their resolved paths and it records their sizes and mtimes; an entry
    whose record differs is parsed again and overwritten. Cache failures (unwritable cache,
    corrupted entry) only cost the parse, never the load.
    """
    sources = [Path(p) for p in sources]
    stamp = fingerprint(sources)
    key = hashlib.sha256("\0".join(str(p.resolve()) for p in sources).encode()).hexdigest()
    entry = cache_dir() / "arrays" / f"{tag}-{key[:20]}.npz"
    if entry.is_file():
        try:
            with np.load(entry, allow_pickle=False) as stored:
                if str(stored[_FINGERPRINT]) == stamp:
                    return {k: stored[k] for k in stored.files if k != _FINGERPRINT}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
            logger.debug("ignoring unreadable cache entry %s: %s", entry, err)
    arrays = parse()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".part",
                                        dir=entry.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez(out, **arrays, **{_FINGERPRINT: np.array(stamp)})
            os.replace(tmp_name, entry)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
    except OSError as err:
        logger.debug("not caching %s: %s", tag, err)
    return arrays
