"""A run's files and its loop of rounds: what both backends write, one way.

:class:`Recorder` owns everything under ``out``: ``metrics.csv`` (one row per evaluation),
``rounds.csv`` (one row per round), ``config.toml`` (fully resolved; a comment names the
device used when the config says ``auto``), ``summary.json`` (with the device used) and
``checkpoint.pt``; the lock ``.lock`` held for the run's life; the rule for an ``out`` that
already holds a run; resuming from the last checkpoint; and the loop that calls a
:class:`Trainer` round after round, evaluating every ``eval_every`` rounds. The simulator
(:class:`~byzsgd.engine.simulator.Simulation`) and the distributed lead server
(:class:`~byzsgd.distributed.server.LeadServer`) are two trainers run by the same recorder, so
either backend resumes the other's run.

What holds for every run:

* a directory that holds a run is never replaced without ``overwrite`` (``resume``
  continues it, same config only);
* one run per ``out`` at a time: a second one fails at once, naming the holder's pid (an
  exclusive ``flock``, which the kernel releases when the holder dies);
* ``resume`` on a finished run changes nothing; it resumes from the last checkpoint with the
  numbers of an uninterrupted run, dropping the rows written after it (and a row cut short
  by a kill); a damaged checkpoint, or results without a checkpoint, are reported, never
  silently replaced;
* a run whose model or loss stops being finite ends with status ``"diverged"``.
"""

from __future__ import annotations

import fcntl
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import torch

from byzsgd.config import ConfigError, ExperimentConfig, to_toml
from byzsgd.results import (
    CsvLog,
    atomic_write,
    load_checkpoint,
    read_json,
    save_checkpoint,
    truncate_rows,
    write_json,
)

ROUND_COLUMNS = ["round", "lr", "attacked", "inner_product", "cosine", "aggregate_norm",
                 "distance", "byzantine_selected"]
METRIC_COLUMNS = ["round", "epoch", "lr", "test_accuracy", "test_top3", "test_loss",
                  "train_loss", "backdoor_success", "inner_product", "cosine",
                  "negative_inner_fraction", "aggregate_norm", "distance",
                  "byzantine_selected", "rounds_per_s"]
#: Statuses of summary.json after which a run is over.
FINISHED = ("complete", "diverged")
#: Files whose presence means ``out`` holds (part of) a run.
RUN_FILES = ("metrics.csv", "checkpoint.pt")


class RunLocked(ValueError):
    """Another process is writing a run in the same ``out``."""


class Trainer(Protocol):
    """What a recorder runs. ``round(t)`` trains round t and returns its rounds.csv row;
    ``evaluate()`` measures the current model (metrics.csv's accuracy and loss columns);
    ``state()`` is what a checkpoint keeps of the training (``theta``, ``server``, ...: tensors
    and plain values); ``begin(state, start)`` is called once, before round ``start``, with the
    checkpoint's state when resuming (None when starting); ``report()`` adds entries to
    summary.json."""

    def round(self, t: int) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def state(self) -> dict[str, Any]: ...

    def begin(self, state: dict[str, Any] | None, start: int) -> None: ...

    def report(self) -> dict[str, Any]: ...


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds (part of) a run's results."""
    return any((out / name).exists() for name in RUN_FILES)


def refuse_to_replace(out: Path, *, resume: bool, overwrite: bool) -> None:
    """The rule of both backends: a run in ``out`` is continued (``resume``) or started over
    (``overwrite``), never silently replaced."""
    if not (resume or overwrite) and holds_run(out):
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, "
                          f"--overwrite to start it over, or choose another --out")


def check_out(out: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Fail now, before anything is built, if a run in ``out`` could not start: another run
    holds it (:class:`RunLocked`), or it holds a run that neither ``resume`` nor ``overwrite``
    allows to touch. The run's recorder checks again under its lock."""
    held = lock(out)
    try:
        refuse_to_replace(out, resume=resume, overwrite=overwrite)
    finally:
        held.close()


def lock(out: Path) -> IO[str]:
    """An exclusive lock on ``out`` (``out/.lock``, which names the holder's pid), held while
    the returned file stays open. Raises :class:`RunLocked` at once if another process holds
    it. The kernel releases it when the holder exits, even when killed."""
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a+")  # noqa: SIM115 - held for the run's life
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise RunLocked(f"{out} is in use by another run (pid {holder}): wait for it to end, "
                        f"or choose another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def interval_means(rows: list[dict[str, float]], totals: Sequence[str] = ()
                   ) -> dict[str, float]:
    """The round diagnostics since the last evaluation, as metrics.csv reports them: means,
    the fraction of negative inner products, and the sums of the ``totals`` columns."""
    out: dict[str, float] = {}
    for key in ("inner_product", "cosine", "aggregate_norm", "distance", "byzantine_selected"):
        values = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = sum(values) / len(values) if values else float("nan")
    out["negative_inner_fraction"] = (sum(r["inner_product"] < 0 for r in rows) / len(rows)
                                      if rows else float("nan"))
    for key in totals:
        out[key] = sum(r[key] for r in rows)
    return out


def diverged(row: dict[str, float], theta: torch.Tensor) -> bool:
    """Whether training diverged: a non-finite loss or parameter."""
    return (not math.isfinite(row["test_loss"]) or not math.isfinite(row["train_loss"])
            or not bool(torch.isfinite(theta).all()))


class Recorder:
    """The files of one run under ``out`` and the loop that fills them (module docstring).

    ``epoch(t)`` and ``lr(t)`` give metrics.csv's epoch and step-size columns; the trainer's
    rows may carry more columns than the simulator's (``round_columns``,
    ``metric_columns``), and the ``totals`` columns of its rounds are summed per evaluation.
    """

    def __init__(self, out: Path, config: ExperimentConfig, *, d: int,
                 epoch: Callable[[int], int], lr: Callable[[int], float],
                 round_columns: Sequence[str] = ROUND_COLUMNS,
                 metric_columns: Sequence[str] = METRIC_COLUMNS,
                 totals: Sequence[str] = ()) -> None:
        self.out = Path(out)
        self.cfg = config
        self.d = d
        self.epoch = epoch
        self.lr = lr
        self.round_columns = list(round_columns)
        self.metric_columns = list(metric_columns)
        self.totals = tuple(totals)
        self.files = {name: self.out / name for name in
                      ("metrics.csv", "rounds.csv", "config.toml", "summary.json",
                       "checkpoint.pt")}
        self._lock: IO[str] | None = None

    # -- opening: lock, the overwrite rule, resume ------------------------------------------

    def acquire(self, *, resume: bool = False, overwrite: bool = False) -> None:
        """Take ``out``'s lock and apply the overwrite rule (both fail at once, before any
        training). Idempotent; :meth:`release` gives the lock back."""
        if self._lock is None:
            self._lock = lock(self.out)
        try:
            refuse_to_replace(self.out, resume=resume, overwrite=overwrite)
        except ConfigError:
            self.release()
            raise

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _finished(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """summary.json when it says the run whose checkpoint is ``state`` is over."""
        try:
            summary = read_json(self.files["summary.json"])
        except (OSError, ValueError):
            return None
        if not isinstance(summary, dict) or summary.get("status") not in FINISHED:
            return None
        if summary["status"] == "complete" and state["round"] < self.cfg.rounds:
            return None
        return summary

    def _load(self) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start afresh)."""
        path = self.files["checkpoint.pt"]
        if not path.exists():
            if any(self.files[name].exists() and self.files[name].stat().st_size > 0
                   for name in ("metrics.csv", "rounds.csv")):
                raise ConfigError(f"--resume: {self.out} holds results but no checkpoint.pt "
                                  f"to continue from; pass --overwrite to start it over, or "
                                  f"choose another --out")
            return None
        state = load_checkpoint(path)
        if state.get("config") != self.cfg.to_dict():
            raise ConfigError(f"{self.out} holds a run of a different config; use another "
                              f"--out or run without --resume to start over")
        return state

    # -- the run ------------------------------------------------------------------------------

    def run(self, trainer: Trainer, *, resume: bool = False, overwrite: bool = False,
            progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train ``trainer`` from round 0, or from the last checkpoint (``resume``), to the
        config's last round, writing the files as it goes; returns the summary."""
        self.acquire(resume=resume, overwrite=overwrite)
        try:
            return self._run(trainer, resume, progress)
        finally:
            self.release()

    def _run(self, trainer: Trainer, resume: bool,
             progress: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
        cfg, files = self.cfg, self.files
        state = self._load() if resume else None  # a damaged file raises CheckpointError
        summary: dict[str, Any] = {"status": "running", "d": self.d, "config": cfg.to_json()}
        start, best, elapsed, history = 0, -1.0, 0.0, {"negative": 0, "rounds": 0}
        if state is not None:
            finished = self._finished(state)
            if finished is not None:
                print(f"byzsgd: {self.out} holds a finished run ({finished['status']}, "
                      f"{finished.get('rounds_done')} rounds): nothing to do", file=sys.stderr)
                return finished
            start, best, elapsed, history = (state["round"], state["best"], state["elapsed"],
                                             state["history"])
            summary.update(state.get("summary", {}))
            # metrics.csv rows count rounds completed, rounds.csv rows the round index
            truncate_rows(files["metrics.csv"], start + 1)
            truncate_rows(files["rounds.csv"], start)
        else:
            for name in ("metrics.csv", "rounds.csv", "checkpoint.pt", "summary.json"):
                files[name].unlink(missing_ok=True)
        atomic_write(files["config.toml"], _device_note(cfg, trainer.report())
                     + to_toml(cfg.to_dict()))
        trainer.begin(state, start)
        metrics = CsvLog(files["metrics.csv"], self.metric_columns)
        rounds = CsvLog(files["rounds.csv"], self.round_columns)
        interval: list[dict[str, float]] = []
        last: dict[str, float] = {}

        def record(t: int) -> bool:
            """Evaluate, write the metrics row, checkpoint; False when training diverged."""
            nonlocal best, last
            row = {"round": t, "epoch": self.epoch(t), "lr": self.lr(max(t - 1, 0)),
                   **trainer.evaluate(), **interval_means(interval, self.totals)}
            row["rounds_per_s"] = history["rounds"] / elapsed if elapsed > 0 else float("nan")
            metrics.write(row)
            best = max(best, row["test_accuracy"])
            last = row
            interval.clear()
            training = trainer.state()
            summary.update(_summary(row, best, t, elapsed, history), **trainer.report())
            bad = diverged(row, training["theta"])
            if bad:
                summary.update(status="diverged", diverged_round=t)
            save_checkpoint(files["checkpoint.pt"], {
                "config": cfg.to_dict(), "round": t, **training, "best": best,
                "elapsed": elapsed, "history": dict(history), "summary": dict(summary)})
            write_json(files["summary.json"], summary)
            return not bad

        try:
            healthy = summary["status"] != "diverged"
            if state is None:
                healthy = record(0)
            for t in range(start, cfg.rounds):
                if not healthy:
                    break
                tic = time.perf_counter()
                diag = trainer.round(t)
                elapsed += time.perf_counter() - tic
                history["rounds"] += 1
                history["negative"] += int(diag["inner_product"] < 0)
                rounds.write(diag)
                interval.append(diag)
                if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
                    healthy = record(t + 1)
                if progress is not None:
                    progress(t + 1, last)
        finally:
            metrics.close()
            rounds.close()
        if summary["status"] != "diverged":
            summary["status"] = "complete"
        summary.update(trainer.report())
        write_json(files["summary.json"], summary)
        return summary


def _device_note(cfg: ExperimentConfig, report: dict[str, Any]) -> str:
    """A comment for config.toml naming the device the run computes on, when the config
    names it otherwise (``auto``, ``cuda``); the config itself stays as written, so that a
    resumed run compares equal to its checkpoint."""
    used = report.get("device")
    return f"# device used: {used}\n" if used is not None and used != cfg.device else ""


def _summary(row: dict[str, float], best: float, t: int, elapsed: float,
             history: dict[str, int]) -> dict[str, Any]:
    return {"rounds_done": t, "final_test_accuracy": row["test_accuracy"],
            "final_test_top3": row["test_top3"], "best_test_accuracy": best,
            "final_train_loss": row["train_loss"], "final_backdoor_success":
                row["backdoor_success"], "train_seconds": elapsed,
            "rounds_per_s": history["rounds"] / elapsed if elapsed > 0 else None,
            "negative_inner_fraction": history["negative"] / max(history["rounds"], 1)}
