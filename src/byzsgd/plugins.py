"""A user's plugin modules: imported before a config is resolved, in every process of a run.

A plugin is a module that registers rules, attacks, models or data sets with the four
``register`` decorators (``byzsgd.aggregators.register``, ``byzsgd.attacks.register``,
``byzsgd.models.register``, ``byzsgd.data.register``). It is named by ``byzsgd run --plugin
MODULE`` or ``plugins = ["MODULE", ...]`` in the TOML, either as a module name importable from
``sys.path`` or the current folder (``my_plugin``, ``mypkg.rules``), or as the path of a
``.py`` file. :func:`load` imports each once per process; the config's ``validate`` calls it,
so the CLI, sweep worker processes, ``--resume`` and the distributed server and worker
processes all import the plugins before they look up a name.

This module sits at the bottom of the package (no byzsgd imports): its errors are
:class:`PluginError`, which :mod:`byzsgd.config` turns into a ``ConfigError``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

#: The modules loaded from file paths in this process, by resolved path.
_BY_PATH: dict[str, ModuleType] = {}


class PluginError(ValueError):
    """A plugin that cannot be imported; the message names it and what to change."""


def is_path(plugin: str) -> bool:
    """Whether ``plugin`` names a ``.py`` file rather than a module."""
    return plugin.endswith(".py") or os.sep in plugin or "/" in plugin


def normalize(plugin: str) -> str:
    """The form a plugin is recorded in: a module name as given, a file as an absolute path
    (so that a run's record can be resumed from another folder)."""
    if not isinstance(plugin, str) or not plugin.strip():
        raise PluginError(f"a plugin must be a module name or the path of a .py file, got "
                          f"{plugin!r}")
    plugin = plugin.strip()
    return str(Path(plugin).resolve()) if is_path(plugin) else plugin


def merge(*lists: Iterable[str]) -> list[str]:
    """The plugins of several lists, normalized, each once, in first-seen order."""
    out: list[str] = []
    for items in lists:
        for p in items:
            p = normalize(p)
            if p not in out:
                out.append(p)
    return out


def load(plugins: Iterable[str]) -> list[ModuleType]:
    """Import each plugin (once per process; a second call returns the same modules)."""
    return [_load_one(p) for p in plugins]


def _last_line(e: BaseException) -> str:
    lines = traceback.format_exception_only(type(e), e)
    return lines[-1].strip() if lines else repr(e)


def _raised(plugin: str, e: BaseException) -> PluginError:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return PluginError(f"plugin {plugin!r} raised on import{where}: {_last_line(e)}; fix the "
                       f"plugin module")


def _load_one(plugin: str) -> ModuleType:
    plugin = normalize(plugin)
    if is_path(plugin):
        return _load_path(plugin)
    if plugin in sys.modules:
        return sys.modules[plugin]
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # console scripts omit the current folder
        sys.path.append(cwd)
    try:
        return importlib.import_module(plugin)
    except ModuleNotFoundError as e:
        if e.name is not None and (plugin == e.name or plugin.startswith(e.name + ".")):
            raise PluginError(f"plugin {plugin!r}: no module named {e.name!r} on the Python "
                              f"path (current folder {cwd}); give a module name importable "
                              f"from there or from PYTHONPATH, or the path of a .py file"
                              ) from None
        raise _raised(plugin, e) from e
    except Exception as e:
        raise _raised(plugin, e) from e


def _load_path(path: str) -> ModuleType:
    if path in _BY_PATH:
        return _BY_PATH[path]
    file = Path(path)
    if not file.is_file():
        raise PluginError(f"plugin {path!r}: no such file; give the path of a .py file or a "
                          f"module name")
    if file.suffix != ".py":
        raise PluginError(f"plugin {path!r}: not a .py file; give the path of a .py file or a "
                          f"module name")
    name = file.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) and \
            Path(loaded.__file__).resolve() == file:  # type: ignore[arg-type]
        _BY_PATH[path] = loaded
        return loaded
    if loaded is not None:  # another module of that name: keep both apart
        name = f"byzsgd_plugin_{abs(hash(path)):x}_{name}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {path!r}: cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: its classes pickle, its names resolve
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise _raised(path, e) from e
    _BY_PATH[path] = module
    return module
