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


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False)


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
    """Keep the header and the rows with ``round < below`` (resuming from a checkpoint must
    not duplicate the rows written after it)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    col = rows[0].index("round")
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[col]) < below]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)
    os.replace(tmp, path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
