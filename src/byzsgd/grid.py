"""Grids of runs, as ``byzsgd sweep`` and ``byzsgd reproduce`` both read them: the one reader of
a file's ``[experiment]`` and ``[sweep]`` tables, the one expansion into runs (directory name,
table row, config), the state of a run on disk, and the one mean/std-over-seeds table.

.. code-block:: toml

    [experiment]                 # the base config (without this table: the file's top level)
    aggregator = "krum"
    attack = "alie"

    [sweep]
    aggregator = ["mean", "krum"]        # an axis: a config field and its values
    attack_params.z = [0.5, 1.0]         # an axis: a parameter of the rule or the attack
    seeds = [0, 1, 2]                    # default: [experiment] seed, else [0]

    [sweep.params.alie]                  # parameters of the attack (or rule) of that name,
    z = 1.5                              # applied whenever it runs

The runs are the product of the axes, times the seeds; a run's parameters are, later ones
winning, the base config's, ``[sweep.params.NAME]``, a variant's own and the swept ones.
``byzsgd reproduce`` adds named *variants* (``[[reproduce.variants]]``, :class:`Variant`):
groups of overrides, each crossed with the axes, and a quick mode; the expansion is the same.
Running the grid is :func:`byzsgd.experiment.run_points`.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzsgd.config import ConfigError, ExperimentConfig, experiment_table, load_toml
from byzsgd.results import read_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Config fields holding a rule's or an attack's parameters, which grids can vary key by key.
PARAM_AXES = ("aggregator_params", "attack_params")


# -- reading ------------------------------------------------------------------------------------

def read_toml(path: str | Path) -> dict[str, Any]:
    """All tables of a TOML file (``[experiment]``, ``[sweep]``, ``[reproduce]``, ...)."""
    load_toml(path)  # the same errors as a run config for a missing or malformed file
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def _dotted(table: Mapping[str, Any]) -> dict[str, Any]:
    """``[sweep]`` keys, dotted ones as one key: TOML reads ``attack_params.z = [...]`` as
    ``{"attack_params": {"z": [...]}}``, which becomes ``{"attack_params.z": [...]}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _variant_keys(table: Mapping[str, Any]) -> dict[str, Any]:
    """A variant's keys: under a parameter table, list values become axes
    (``"attack_params.z": [...]``), scalar ones stay in the table (fixed parameters)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in PARAM_AXES and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, list)})
            fixed = {k: v for k, v in value.items() if not isinstance(v, list)}
            if fixed or not value:
                out[key] = fixed
        else:
            out[key] = value
    return out


def _check_axes(axes: Mapping[str, Any], where: str) -> None:
    known = ExperimentConfig.field_names()
    for key, value in axes.items():
        head, dot, _ = key.partition(".")
        if head not in known or (dot and head not in PARAM_AXES):
            raise ConfigError(f"{where}: axis {key!r} is not a config field or a rule or "
                              f"attack parameter ({' or '.join(PARAM_AXES)}.KEY)")
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list of values, got {value!r}")


@dataclass(frozen=True)
class Variant:
    """A named group of runs: config ``overrides``, ``axes`` added to or replacing the grid's
    (a list value in the table), and this group's extra ``quick`` overrides."""

    label: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> Variant:
        values = _variant_keys(table)
        label = str(values.pop("label", ""))
        quick = dict(values.pop("quick", {}))
        axes = {k: v for k, v in values.items() if isinstance(v, list)}
        overrides = {k: v for k, v in values.items() if not isinstance(v, list)}
        unknown = sorted(set(overrides) - set(ExperimentConfig.field_names()))
        if unknown:
            raise ConfigError(f"{where}: variant {label!r}: unknown field(s) {unknown}")
        _check_axes(axes, f"{where}: variant {label!r}")
        return cls(label, overrides, axes, quick)


# -- the expansion ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One run of a grid: its directory ``name``, its table ``row`` label, its ``config``
    and the grid point (``axes``: axis -> value)."""

    name: str
    row: str
    config: ExperimentConfig
    axes: dict[str, Any] = field(default_factory=dict, compare=False)


def path_token(value: Any) -> str:
    """``value`` as it appears in a run directory's name (a list, such as a
    ``pre_aggregators`` axis value: its items joined by ``+``, ``none`` when empty)."""
    if isinstance(value, list | tuple):
        return "+".join(path_token(v) for v in value) or "none"
    return str(value).replace("/", "-").replace(" ", "")


def _slug(text: str) -> str:
    """A file-name-safe form of a label: ``krum (30 + 27)`` -> ``krum_30+27``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.=+-]", "_", text)).strip("_")


def fmt(value: Any) -> str:
    """A value as a table row shows it (``1.0`` -> ``1``, ``0.5`` -> ``0.5``, ``["nnm",
    "krum"]`` -> ``nnm+krum``, ``[]`` -> ``none``)."""
    if isinstance(value, list | tuple):
        return "+".join(fmt(v) for v in value) or "none"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value)) if abs(value) >= 1 else f"{value:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def resolve_data_dir(value: str | None, root: Path) -> str | None:
    """A relative data_dir is taken relative to the current directory if it exists there,
    else to ``root`` (where the committed experiments' ``../shared/data`` points)."""
    if value is None or Path(value).is_absolute():
        return value
    for base in (Path.cwd(), root):
        if (base / value).exists():
            return str((base / value).resolve())
    return str((root / value).resolve())


def config_value(cfg: ExperimentConfig, key: str) -> Any:
    """A config value by (dotted) name: ``batch_size``, ``attack_params.epsilon`` (None when
    that parameter is not set)."""
    head, _, rest = key.partition(".")
    value = getattr(cfg, head)
    return value.get(rest) if rest else value


@dataclass(frozen=True)
class Sweep:
    """A grid of runs: the ``base`` config, the ``axes`` (field or ``PARAM.KEY`` -> values)
    whose product is taken, the ``seeds``, the per-name parameters (``params[name] = {key:
    value}``, applied when a rule or attack of that name runs), optional ``variants`` and the
    grid's ``name`` (the table row of a grid without axes)."""

    base: ExperimentConfig
    axes: dict[str, list[Any]]
    seeds: list[int]
    params: dict[str, dict[str, Any]]
    variants: tuple[Variant, ...] = ()
    name: str = ""

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None,
                  seeds: list[int] | None = None) -> Sweep:
        """Read ``[experiment]`` and ``[sweep]`` (``overrides``: config fields set by flags;
        ``seeds``: replaces the file's)."""
        raw = read_toml(path)
        values = experiment_table(raw, path)
        grid = raw.get("sweep", {})
        if not isinstance(grid, dict):
            raise ConfigError(f"{path}: sweep must be a table ([sweep]), got {grid!r}")
        grid = dict(grid)
        params = grid.pop("params", {})
        if not isinstance(params, dict) or not all(isinstance(v, dict)
                                                   for v in params.values()):
            raise ConfigError(f"{path}: [sweep.params.NAME] must be tables of parameters")
        file_seeds = grid.pop("seeds", [values.get("seed", 0)])
        if not isinstance(file_seeds, list):
            raise ConfigError(f"{path}: [sweep] seeds must be a list of ints, got "
                              f"{file_seeds!r}")
        grid = _dotted(grid)
        _check_axes(grid, f"{path}: [sweep]")
        base = ExperimentConfig.from_dict({**values, **(overrides or {})})
        return cls(base, grid, list(seeds if seeds is not None else file_seeds), params,
                   name=Path(path).stem)

    def configs(self) -> list[tuple[str, ExperimentConfig]]:
        """(run name, config) for every point of the grid and every seed."""
        return [(p.name, p.config) for p in self.points()]

    def points(self, *, quick: Mapping[str, Any] | None = None,
               seeds: Sequence[int] | None = None, data_root: Path | None = None
               ) -> list[Point]:
        """Every run: each variant (or the plain grid) crossed with the axes and seeds.

        ``quick`` (the quick mode's overrides, None: not quick) sets config fields, replaces
        an axis with a list, and may give ``seeds`` (default: the first seed); ``seeds``
        replaces all seeds; ``data_root`` resolves a relative ``data_dir`` against it."""
        quick_values = dict(quick) if quick is not None else {}
        file_seeds = quick_values.pop("seeds", self.seeds[:1]) if quick is not None \
            else self.seeds
        run_seeds = list(seeds) if seeds is not None else list(file_seeds)
        out: list[Point] = []
        for variant in self.variants or (Variant(),):
            axes = {**self.axes, **variant.axes}
            changes: dict[str, Any] = dict(variant.overrides)
            extra = {**quick_values, **(variant.quick if quick is not None else {})}
            for key, value in extra.items():
                if key in axes and isinstance(value, list):
                    axes[key] = value
                else:
                    changes[key] = value
                    axes.pop(key, None)
            if data_root is not None:
                changes["data_dir"] = resolve_data_dir(
                    changes.get("data_dir", self.base.data_dir), data_root)
            base = self.base.replace(**_fields(changes)) if changes else self.base
            out += self._expand(base, axes, variant, run_seeds)
        names = [p.name for p in out]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.name or 'grid'}: two runs share a name; give variants "
                              f"distinct labels")
        return out

    def _expand(self, base: ExperimentConfig, axes: dict[str, list[Any]], variant: Variant,
                seeds: list[int]) -> list[Point]:
        keys = list(axes)
        own = variant.overrides
        out = []
        for combo in itertools.product(*(axes[k] for k in keys)):
            point = dict(zip(keys, combo, strict=True))
            fields_ = {k: v for k, v in point.items() if "." not in k}
            swept: dict[str, dict[str, Any]] = {group: {} for group in PARAM_AXES}
            for key, value in point.items():
                group, _, param = key.partition(".")
                if param:
                    swept[group][param] = value
            row = " / ".join([fmt(v) if k in ("aggregator", "attack") else f"{k}={fmt(v)}"
                              for k, v in point.items()]
                             + ([variant.label] if variant.label else [])) or self.name
            prefix = ([_slug(variant.label)] if variant.label else []) + \
                [f"{k}={path_token(v)}" for k, v in point.items()]
            for seed in seeds:
                cfg = base.replace(**fields_, seed=seed)
                cfg = cfg.replace(**{group: {**getattr(cfg, group),
                                             **self._params_of(getattr(cfg, head)),
                                             **own.get(group, {}), **swept[group]}
                                     for group, head in zip(PARAM_AXES, ("aggregator", "attack"),
                                                            strict=True)})
                out.append(Point("__".join([*prefix, f"seed={seed}"]), row, cfg, point))
        return out


    def _params_of(self, name: Any) -> dict[str, Any]:
        """``[sweep.params.NAME]`` (a name of the wrong type, refused by validation, has
        none)."""
        return self.params.get(name, {}) if isinstance(name, str) else {}


def _fields(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(ExperimentConfig.field_names()))
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
    return changes


# -- runs on disk and the table -------------------------------------------------------------

def summary_config(out: Path) -> dict[str, Any] | None:
    """The config recorded in ``out/summary.json`` (None when absent or unreadable)."""
    try:
        return read_json(out / "summary.json").get("config")
    except (OSError, ValueError):
        return None


#: Statuses of a run that has ended: run again with the same config, it ends the same way.
FINISHED = ("complete", "diverged")


def run_state(out: Path, config: ExperimentConfig) -> str:
    """``complete`` (ended: status complete or diverged), ``partial`` (same config,
    resumable), ``stale`` (another config, or an unreadable summary) or ``new``."""
    summary = out / "summary.json"
    if not summary.exists():
        return "new"
    try:
        done = read_json(summary)
    except (OSError, ValueError):
        return "stale"
    if done.get("config") != config.to_json():
        return "stale"
    return "complete" if done.get("status") in FINISHED else "partial"


def is_complete(out: Path, config: ExperimentConfig) -> bool:
    """A finished run of exactly this config lives in ``out``."""
    return run_state(out, config) == "complete"


def mean_std(points: Iterable[Point], key: Callable[[Point], dict[str, Any]],
             measure: Callable[[Point], Mapping[str, Any]], columns: Sequence[str]
             ) -> list[dict[str, Any]]:
    """One row per distinct ``key(point)`` (in order of appearance): the key's fields, the
    number of runs (``seeds``), and ``COLUMN_mean``/``COLUMN_std`` over the runs' ``measure``
    (values that are None or NaN left out; std 0 for one value, NaN mean for none)."""
    groups: dict[str, tuple[dict[str, Any], list[Mapping[str, Any]]]] = {}
    for p in points:
        head = key(p)
        groups.setdefault(repr(tuple(head.values())), (head, []))[1].append(measure(p))
    table = []
    for head, runs in groups.values():
        row: dict[str, Any] = {**head, "seeds": len(runs)}
        for c in columns:
            values = [v for r in runs if (v := r.get(c)) is not None and not math.isnan(v)]
            row[f"{c}_mean"] = statistics.fmean(values) if values else float("nan")
            row[f"{c}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(row)
    return table


def summarize(out: Path, runs: Iterable[tuple[str, ExperimentConfig]], axes: list[str]
              ) -> list[dict[str, Any]]:
    """A sweep's table: per grid point (the ``axes`` values), mean and standard deviation over
    seeds of the final and best test accuracy."""
    points = [Point(name, "", cfg) for name, cfg in runs]
    return mean_std(points, lambda p: {a: config_value(p.config, a) for a in axes},
                    lambda p: read_json(out / p.name / "summary.json"),
                    ("final_test_accuracy", "best_test_accuracy"))

