"""Whether numba's cache of the compiled kernels (``njit(cache=True)``) is cold.

The kernels (aggregators/_gram.py, _orderstats.py, _linf.py, _rows.py, _mix.py,
attacks/_moments.py, engine/sparse.py) compile for ~20 s on their first call. numba stores
them next to the sources (``__pycache__/*.nbi``, ``*.nbc``); where the package directory is
not writable (a system-wide install) numba itself falls back to its user-wide cache
(``~/.cache/numba/<subpath>``), and a user's ``NUMBA_CACHE_DIR`` comes first. byzsgd sets
nothing: ``import byzsgd`` changes no environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: The modules holding ``njit(cache=True)`` kernels, relative to the package.
KERNEL_MODULES = ("aggregators/_gram.py", "aggregators/_orderstats.py", "aggregators/_linf.py",
                  "aggregators/_rows.py", "aggregators/_mix.py", "attacks/_moments.py",
                  "engine/sparse.py")


def _user_dirs(source: Path) -> list[Path]:
    """numba's cache directories for ``source`` outside the package: the user's
    ``NUMBA_CACHE_DIR`` and numba's user-wide fallback, each with numba's per-file subpath."""
    from numba.core.caching import _CacheLocator
    from numba.misc.appdirs import AppDirs

    sub = _CacheLocator.get_suitable_cache_subpath(str(source))
    roots = [Path(os.environ["NUMBA_CACHE_DIR"])] if os.environ.get("NUMBA_CACHE_DIR") else []
    roots.append(Path(AppDirs(appname="numba", appauthor=False).user_cache_dir))
    return [root / sub for root in roots]


def cache_dirs(modules: tuple[str, ...] = KERNEL_MODULES) -> list[Path]:
    """The directories numba's cache files of ``modules`` may be in: next to the sources,
    the user's ``NUMBA_CACHE_DIR``, numba's user-wide cache."""
    dirs: list[Path] = []
    for m in modules:
        source = PACKAGE / m
        dirs.append(source.parent / "__pycache__")
        dirs.extend(_user_dirs(source))
    return list(dict.fromkeys(dirs))


def is_cold(modules: tuple[str, ...] = KERNEL_MODULES) -> bool:
    """True when one of ``modules`` (paths relative to the package) has no compiled entry
    (``<module>.*.nbi``) in any of its cache directories."""
    found = set()
    for directory in cache_dirs(modules):
        if directory.is_dir():
            found.update(p.name.split(".")[0] for p in directory.glob("*.nbi"))
    return any(Path(m).stem not in found for m in modules)
