"""A one-line progress display for long runs (stderr; silent when --quiet or not a TTY
unless forced)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """``round 120/300 | 45.1 rounds/s | test acc 91.2% | eta 4s``, refreshed at most every
    ``interval`` seconds."""

    def __init__(self, total: int, label: str = "", *, stream: TextIO | None = None,
                 interval: float = 0.5) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = interval
        self.start = time.perf_counter()
        self.first: int | None = None
        self.shown = 0.0

    def __call__(self, done: int, last: dict[str, Any]) -> None:
        now = time.perf_counter()
        if self.first is None:  # rates count from the first round seen (resumed runs)
            self.first, self.start = done, now
            return
        if now - self.shown < self.interval and done < self.total:
            return
        self.shown = now
        rate = (done - self.first) / max(now - self.start, 1e-9)
        acc = last.get("test_accuracy")
        parts = [f"{self.label}round {done}/{self.total}", f"{rate:.1f} rounds/s"]
        if acc is not None:
            parts.append(f"test acc {100 * acc:.1f}%")
        if done < self.total:
            parts.append(f"eta {(self.total - done) / rate:.0f}s")
        end = "\n" if done >= self.total else ""
        self.stream.write("\r" + " | ".join(parts) + "\033[K" + end)
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class SweepProgress:
    """A whole sweep's progress: ``demo: 5/27 runs done | 1m12s elapsed | ~3m40s left | last:
    NAME``, one line per update (stderr), the time left extrapolated from the runs done."""

    def __init__(self, total: int, label: str = "sweep", *, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self, done: int) -> float | None:
        """Seconds left, assuming the remaining runs take as long as the ones done."""
        if done <= 0:
            return None
        return self.elapsed() / done * (self.total - done)

    def line(self, done: int, last: str = "") -> str:
        parts = [f"{self.label}: {done}/{self.total} runs done",
                 f"{_duration(self.elapsed())} elapsed"]
        eta = self.eta(done)
        if eta is not None and done < self.total:
            parts.append(f"~{_duration(eta)} left")
        if last:
            parts.append(f"last: {last}")
        return " | ".join(parts)

    def update(self, done: int, last: str = "") -> None:
        if self.enabled:
            self.stream.write(self.line(done, last) + "\n")
            self.stream.flush()
