"""Runs and sweeps: what ``byzsgd run`` and ``byzsgd sweep`` do, usable from Python.

    >>> from byzsgd.config import ExperimentConfig
    >>> from byzsgd.experiment import run
    >>> config = ExperimentConfig(aggregator="krum", attack="alie", rounds=100)
    >>> run(config, "runs/x")  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from byzsgd.config import ConfigError, ExperimentConfig, load_toml
from byzsgd.progress import Progress
from byzsgd.results import read_json, write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SWEEP_TABLE = "sweep.csv"


def run(config: ExperimentConfig, out: str | Path, *, resume: bool = False,
        overwrite: bool = False, quiet: bool = True, label: str = "") -> dict[str, Any]:
    """Run one experiment, writing its files under ``out``; returns the summary.

    A directory that already holds a run is never silently replaced: ``resume`` continues it
    (same config only; a finished run is left as it is), ``overwrite`` starts it over;
    otherwise :class:`ConfigError`. One run at a time per ``out``: a second one raises
    :class:`~byzsgd.engine.recorder.RunLocked`. A run that diverges (non-finite loss or
    parameters) stops with ``status == "diverged"`` in the summary.
    """
    from byzsgd.engine.recorder import check_out
    from byzsgd.engine.setup import build
    from byzsgd.engine.simulator import Simulation

    out = Path(out)
    check_out(out, resume=resume, overwrite=overwrite)
    setup = build(config)
    progress = None if quiet else Progress(config.rounds, label)
    return Simulation(setup, out).run(resume=resume, overwrite=overwrite, progress=progress)


# -- sweeps ------------------------------------------------------------------------------------

#: Config fields holding a rule's or an attack's parameters, which sweeps can vary key by key.
PARAM_AXES = ("aggregator_params", "attack_params")


@dataclass(frozen=True)
class Sweep:
    """A grid of runs: the ``base`` config, the ``axes`` (field -> values) whose product is
    taken, the ``seeds``, and per-name parameters applied when a rule or attack of that name
    runs (``params[name] = {key: value}``).

    An axis is a config field (``aggregator``, ``byzantine``, ...) or a parameter of the rule or
    the attack, named ``aggregator_params.KEY`` / ``attack_params.KEY`` (in the TOML file
    ``attack_params.z = [0.5, 1.0]`` under ``[sweep]``); a parameter axis overrides the same
    key of the base config and of ``params``."""

    base: ExperimentConfig
    axes: dict[str, list[Any]]
    seeds: list[int]
    params: dict[str, dict[str, Any]]

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None,
                  seeds: list[int] | None = None) -> Sweep:
        raw = read_toml(path)
        values = dict(raw.get("experiment", {k: v for k, v in raw.items() if k != "sweep"}))
        grid = dict(raw.get("sweep", {}))
        params = grid.pop("params", {})
        file_seeds = grid.pop("seeds", [values.get("seed", 0)])
        for group in [k for k, v in grid.items() if isinstance(v, dict)]:
            # a dotted key (attack_params.z = [...]) arrives as {"attack_params": {"z": [...]}}
            grid.update({f"{group}.{k}": v for k, v in grid.pop(group).items()})
        for key, value in grid.items():
            head, dot, _ = key.partition(".")
            if head not in ExperimentConfig.field_names() or (dot and head not in PARAM_AXES):
                raise ConfigError(f"{path}: [sweep] axis {key!r} is not a config field or a "
                                  f"rule or attack parameter ({' or '.join(PARAM_AXES)}.KEY)")
            if not isinstance(value, list):
                raise ConfigError(f"{path}: [sweep] {key} must be a list of values")
        base = ExperimentConfig.from_dict({**values, **(overrides or {})})
        return cls(base, grid, list(seeds if seeds is not None else file_seeds), params)

    def configs(self) -> list[tuple[str, ExperimentConfig]]:
        """(run name, config) for every point of the grid and every seed."""
        out = []
        keys = list(self.axes)
        for combo in itertools.product(*(self.axes[k] for k in keys)):
            changes = dict(zip(keys, combo, strict=True))
            fields = {k: v for k, v in changes.items() if "." not in k}
            swept: dict[str, dict[str, Any]] = {group: {} for group in PARAM_AXES}
            for key, value in changes.items():
                group, _, param = key.partition(".")
                if param:
                    swept[group][param] = value
            for seed in self.seeds:
                cfg = self.base.replace(**fields, seed=seed)
                cfg = cfg.replace(
                    aggregator_params={**cfg.aggregator_params,
                                       **self.params.get(cfg.aggregator, {}),
                                       **swept["aggregator_params"]},
                    attack_params={**cfg.attack_params, **self.params.get(cfg.attack, {}),
                                   **swept["attack_params"]})
                name = "__".join(f"{k}={path_token(v)}" for k, v in changes.items())
                out.append((f"{name}__seed={seed}" if name else f"seed={seed}", cfg))
        return out


def config_value(cfg: ExperimentConfig, key: str) -> Any:
    """A config value by (dotted) name: ``batch_size``, ``attack_params.epsilon`` (None when
    that parameter is not set)."""
    head, _, rest = key.partition(".")
    value = getattr(cfg, head)
    return value.get(rest) if rest else value


def read_toml(path: str | Path) -> dict[str, Any]:
    """All tables of a TOML file (``[experiment]``, ``[sweep]``, ``[reproduce]``, ...)."""
    load_toml(path)  # the same errors as a run config for a missing or malformed file
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def path_token(value: Any) -> str:
    """``value`` as it appears in a run directory's name."""
    return str(value).replace("/", "-").replace(" ", "")


def run_job(job: tuple[str, dict[str, Any], str, int]) -> tuple[str, dict[str, Any]]:
    """Run ``(name, config values, out dir, torch threads)`` in this process (a pool worker):
    resume a partial run of the same config, start over a run of another config."""
    name, values, out, threads = job
    torch.set_num_threads(threads)
    config = ExperimentConfig(**values)
    # A partial run of this very config is resumed; a run of an older grid is started over.
    same = _summary_config(Path(out)) == config.to_json()
    summary = run(config, out, resume=same, overwrite=not same, quiet=True)
    return name, summary


def is_complete(out: Path, config: ExperimentConfig) -> bool:
    """A finished run of exactly this config lives in ``out``."""
    summary = out / "summary.json"
    if not summary.exists():
        return False
    try:
        done = read_json(summary)
    except (OSError, ValueError):
        return False
    return done.get("status") == "complete" and done.get("config") == config.to_json()


def _summary_config(out: Path) -> dict[str, Any] | None:
    try:
        return read_json(out / "summary.json").get("config")
    except (OSError, ValueError):
        return None


def run_sweep(sweep: Sweep, out: str | Path, *, jobs: int = 1, quiet: bool = False
              ) -> list[dict[str, Any]]:
    """Run every point of ``sweep`` under ``out/<run name>/`` (``jobs`` processes), skipping
    runs already complete, then write and return the table of mean/std over seeds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = sweep.configs()
    for _, cfg in runs:  # fail before starting anything
        cfg.validate()
    todo = [(name, cfg) for name, cfg in runs if not is_complete(out / name, cfg)]
    if not quiet:
        print(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already complete, "
              f"{len(todo)} to run with {jobs} process(es)", flush=True)
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    jobs_args = [(name, cfg.to_dict(), str(out / name), threads) for name, cfg in todo]
    if jobs <= 1:
        for i, job in enumerate(jobs_args, 1):
            name, summary = run_job(job)
            _report(quiet, i, len(jobs_args), name, summary)
    else:
        with mp.get_context("spawn").Pool(jobs) as pool:
            for i, (name, summary) in enumerate(pool.imap_unordered(run_job, jobs_args), 1):
                _report(quiet, i, len(jobs_args), name, summary)
    table = summarize(out, runs, list(sweep.axes))
    write_table(out / SWEEP_TABLE, table)
    write_json(out / "sweep.json", {"axes": sweep.axes, "seeds": sweep.seeds,
                                    "runs": [name for name, _ in runs]})
    return table


def _report(quiet: bool, i: int, total: int, name: str, summary: dict[str, Any]) -> None:
    if not quiet:
        acc = summary.get("final_test_accuracy")
        print(f"  [{i}/{total}] {name}: final test accuracy "
              f"{'n/a' if acc is None else f'{100 * acc:.2f}%'}", flush=True)


def summarize(out: Path, runs: Iterable[tuple[str, ExperimentConfig]], axes: list[str]
              ) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of each grid point's final and best accuracy."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for name, cfg in runs:
        key = tuple(config_value(cfg, a) for a in axes)
        summary = read_json(out / name / "summary.json")
        groups.setdefault(key, []).append(summary)
    table = []
    for key, summaries in groups.items():
        row: dict[str, Any] = dict(zip(axes, key, strict=True))
        row["seeds"] = len(summaries)
        for metric in ("final_test_accuracy", "best_test_accuracy"):
            values = [s[metric] for s in summaries if s.get(metric) is not None]
            row[f"{metric}_mean"] = statistics.fmean(values) if values else float("nan")
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(row)
    return table


def write_table(path: Path, table: list[dict[str, Any]]) -> None:
    import csv

    if not table:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def format_table(table: list[dict[str, Any]]) -> str:
    """The sweep table as aligned text: one row per grid point, accuracy mean +/- std."""
    if not table:
        return "(no runs)"
    axes = [k for k in table[0] if not k.startswith(("final_", "best_")) and k != "seeds"]
    header = [*axes, "seeds", "final acc %", "best acc %"]
    def pct(r: dict[str, Any], metric: str) -> str:
        return f"{100 * r[metric + '_mean']:.2f} +/- {100 * r[metric + '_std']:.2f}"

    rows = [[str(r[a]) for a in axes] + [str(r["seeds"]), pct(r, "final_test_accuracy"),
                                         pct(r, "best_test_accuracy")] for r in table]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    return "\n".join([line, "-" * len(line)] + ["  ".join(c.ljust(w) for c, w in
                                                         zip(r, widths, strict=True))
                                                for r in rows])
