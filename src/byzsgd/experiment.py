"""Runs and sweeps: what ``byzsgd run`` and ``byzsgd sweep`` do, usable from Python.

    >>> from byzsgd.config import ExperimentConfig
    >>> from byzsgd.experiment import run
    >>> config = ExperimentConfig(aggregator="krum", attack="alie", rounds=100)
    >>> run(config, "runs/x")  # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import torch

from byzsgd.config import ExperimentConfig
from byzsgd.grid import (
    PARAM_AXES,
    Point,
    Sweep,
    config_value,
    is_complete,
    path_token,
    read_toml,
    run_state,
    summarize,
    summary_config,
)
from byzsgd.progress import Progress
from byzsgd.results import write_json
from byzsgd.tuning import tune_process

#: The grid names this module has always offered (they live in :mod:`byzsgd.grid`).
__all__ = ["PARAM_AXES", "SWEEP_TABLE", "Sweep", "config_value", "format_table",
           "is_complete", "path_token", "read_toml", "run", "run_job", "run_points",
           "run_sweep", "summarize", "write_table"]

SWEEP_TABLE = "sweep.csv"


def run(config: ExperimentConfig, out: str | Path, *, resume: bool = False,
        overwrite: bool = False, quiet: bool = True, label: str = "") -> dict[str, Any]:
    """Run one experiment, writing its files under ``out``; returns the summary.

    A directory that already holds a run is never silently replaced: ``resume`` continues it
    (same config only; a finished run is left as it is), ``overwrite`` starts it over;
    otherwise :class:`~byzsgd.config.ConfigError`. One run at a time per ``out``: a second
    one raises :class:`~byzsgd.engine.recorder.RunLocked`. A run that diverges (non-finite loss or
    parameters) stops with ``status == "diverged"`` in the summary.
    """
    from byzsgd.engine.recorder import check_out
    from byzsgd.engine.setup import build
    from byzsgd.engine.simulator import Simulation

    out = Path(out)
    config.validate()  # an invalid config fails before anything is written under ``out``
    check_out(out, resume=resume, overwrite=overwrite)
    setup = build(config)
    progress = None if quiet else Progress(config.rounds, label)
    return Simulation(setup, out).run(resume=resume, overwrite=overwrite, progress=progress)


# -- grids: the one runner of ``byzsgd sweep`` and ``byzsgd reproduce`` -------------------------

def run_job(job: tuple[str, dict[str, Any], str, int]) -> tuple[str, dict[str, Any]]:
    """Run ``(name, config values, out dir, torch threads)`` in this process (a pool worker):
    resume a partial run of the same config, start over a run of another config."""
    name, values, out, threads = job
    torch.set_num_threads(threads)
    config = ExperimentConfig(**values)
    # A partial run of this very config is resumed; a run of an older grid is started over.
    same = summary_config(Path(out)) == config.to_json()
    summary = run(config, out, resume=same, overwrite=not same, quiet=True)
    return name, summary


def _cost(cfg: ExperimentConfig) -> float:
    """A rough relative cost, to start the longest runs first."""
    return cfg.rounds * cfg.workers * cfg.batch_size * (cfg.local_steps or 1)


def run_points(points: list[Point], out: str | Path, *, jobs: int = 1, quiet: bool = False,
               threads: int | None = None, what: str = "sweep") -> int:
    """Run the points of a grid not complete yet under ``out/<point name>/`` (longest first,
    ``jobs`` processes of ``threads`` torch threads each, default cores / jobs): a partial run
    of the same config is resumed, a run of another config started over. Every config is
    validated before anything runs. Returns how many ran."""
    out = Path(out)
    for p in points:
        p.config.validate()
    out.mkdir(parents=True, exist_ok=True)
    states = {p.name: run_state(out / p.name, p.config) for p in points}
    todo = sorted((p for p in points if states[p.name] != "complete"),
                  key=lambda p: -_cost(p.config))
    if not quiet:
        print(f"{what}: {len(points)} runs, {len(points) - len(todo)} already complete, "
              f"{len(todo)} to run with {jobs} process(es)", flush=True)
        for p in todo:
            if states[p.name] == "stale":
                print(f"  {p.name}: config changed since the last run; starting it over")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    args = [(p.name, p.config.to_dict(), str(out / p.name), threads) for p in todo]
    if jobs <= 1 or len(args) <= 1:
        for i, job in enumerate(args, 1):
            _report(quiet, i, len(args), *run_job(job))
    else:
        # each worker process tunes itself (byzsgd.tune_process) before it loads torch
        with mp.get_context("spawn").Pool(min(jobs, len(args)),
                                          initializer=tune_process) as pool:
            for i, (name, summary) in enumerate(pool.imap_unordered(run_job, args), 1):
                _report(quiet, i, len(args), name, summary)
    return len(todo)


def run_sweep(sweep: Sweep, out: str | Path, *, jobs: int = 1, quiet: bool = False
              ) -> list[dict[str, Any]]:
    """Run every point of ``sweep`` under ``out/<run name>/`` (``jobs`` processes), skipping
    runs already complete, then write and return the table of mean/std over seeds."""
    out = Path(out)
    points = sweep.points()
    run_points(points, out, jobs=jobs, quiet=quiet)
    runs = [(p.name, p.config) for p in points]
    table = summarize(out, runs, list(sweep.axes))
    write_table(out / SWEEP_TABLE, table)
    write_json(out / "sweep.json", {"axes": sweep.axes, "seeds": sweep.seeds,
                                    "runs": [name for name, _ in runs]})
    return table


def _report(quiet: bool, i: int, total: int, name: str, summary: dict[str, Any]) -> None:
    if not quiet:
        acc = summary.get("final_test_accuracy")
        end = (f" (diverged at round {summary.get('diverged_round')})"
               if summary.get("status") == "diverged" else "")
        print(f"  [{i}/{total}] {name}: final test accuracy "
              f"{'n/a' if acc is None else f'{100 * acc:.2f}%'}{end}", flush=True)


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
