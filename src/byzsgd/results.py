"""A run's files, written as it goes: nothing a user ran is lost.

``metrics.csv`` (one row per evaluation), ``rounds.csv`` (one row per round), ``config.toml``
(fully resolved), ``summary.json`` and ``checkpoint.pt``. CSV rows are flushed as they are
written; JSON and checkpoints are replaced atomically (write, then rename), so an interrupted
run leaves readable files and resumes from its last checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(json_safe(value), indent=2, sort_keys=True) + "\n")


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has neither NaN nor Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: damaged, empty, or not a byzsgd checkpoint."""


#: What every checkpoint holds (the trainers add their own entries: theta, server, ...).
CHECKPOINT_KEYS = ("config", "round", "theta", "best", "elapsed", "history")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, read with ``weights_only=True``:
    tensors and plain values only, so a crafted file cannot run code. Anything else (a
    damaged, empty or foreign file) raises :class:`CheckpointError` naming the file."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # torch raises many kinds of error for a bad file
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is damaged or not a byzsgd checkpoint ({why}); "
                              f"delete it and pass --overwrite to start the run over") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a byzsgd checkpoint (it lacks "
                              f"{', '.join(missing)}); delete it and pass --overwrite to "
                              f"start the run over")
    return state


class CsvLog:
    """Append-only CSV with a fixed header, flushed after every row."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        fresh = not path.exists() or path.stat().st_size == 0
        self._fh = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self._writer = csv.DictWriter(self._fh, fieldnames=columns, extrasaction="ignore")
        if fresh:
            self._writer.writeheader()
            self._fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def truncate_rows(path: Path, below: int) -> None:
    """Keep the header and the whole rows with ``round < below`` (resuming from a checkpoint
    must not duplicate the rows written after it; a row cut short by a kill, without its line
    end or its last fields, is dropped)."""
    if not path.exists():
        return
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the last line was cut mid-row
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        path.write_text("")
        return
    col = rows[0].index("round")
    kept = [rows[0]] + [r for r in rows[1:]
                        if len(r) == len(rows[0]) and _round(r[col]) < below]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)
    os.replace(tmp, path)


def _round(value: str) -> float:
    try:
        return int(value)
    except ValueError:
        return math.inf  # a damaged row: dropped


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
