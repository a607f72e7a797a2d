"""Where numba keeps the compiled kernels (``njit(cache=True)``), and whether that cache is
cold.

The kernels (aggregators/_gram.py, _orderstats.py, _linf.py, _rows.py, _mix.py,
attacks/_moments.py, engine/sparse.py) compile for ~20 s on their first call. numba stores
them next to the sources (``__pycache__/*.nbi``, ``*.nbc``); where the package directory is
not writable (a system-wide install) the cache goes to ``~/.cache/byzsgd/numba``
(``NUMBA_CACHE_DIR``, unless the user set it). Must run before numba is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: The modules holding ``njit(cache=True)`` kernels, relative to the package.
KERNEL_MODULES = ("aggregators/_gram.py", "aggregators/_orderstats.py", "aggregators/_linf.py",
                  "aggregators/_rows.py", "aggregators/_mix.py", "attacks/_moments.py",
                  "engine/sparse.py")
USER_CACHE = Path("~/.cache/byzsgd/numba").expanduser()


def _writable(directory: Path) -> bool:
    cache = directory / "__pycache__"
    target = cache if cache.exists() else directory
    return os.access(target, os.W_OK)


def configure() -> None:
    """Point ``NUMBA_CACHE_DIR`` at ``~/.cache/byzsgd/numba`` when the package's kernel
    directories are not writable and the user has not chosen a cache directory."""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    if all(_writable((PACKAGE / m).parent) for m in KERNEL_MODULES):
        return
    os.environ["NUMBA_CACHE_DIR"] = str(USER_CACHE)


def cache_dirs() -> list[Path]:
    """The directories numba's cache files may be in (the user's choice, then the package's)."""
    dirs = [PACKAGE / Path(m).parent / "__pycache__" for m in KERNEL_MODULES]
    if "NUMBA_CACHE_DIR" in os.environ:
        dirs.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    return dirs


def is_cold(modules: tuple[str, ...] = KERNEL_MODULES) -> bool:
    """True when one of ``modules`` (paths relative to the package) has no compiled entry
    (``<module>.*.nbi``) in any cache directory."""
    found = set()
    for directory in dict.fromkeys(cache_dirs()):
        if directory.is_dir():
            found.update(p.name.split(".")[0] for p in directory.rglob("*.nbi"))
    return any(Path(m).stem not in found for m in modules)
