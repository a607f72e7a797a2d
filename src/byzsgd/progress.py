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
