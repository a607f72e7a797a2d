"""Faults: how a server classifies what it received, the run's fault log, and test-only
fault injection.

Every round, each worker's input gets a status (worst wins across servers and phases):

* ``ok``;
* ``nonfinite``: the vector arrived, well-formed, with NaN/Inf values: passed to the rule as
  it is (the robust rules treat such rows as hostile), and counted;
* ``absent``: nothing arrived by the deadline (the worker hung, is late, or died: the
  connection closed): its row is a row of NaN, which the rule treats as Byzantine;
* ``malformed``: the header did not parse, or the payload had the wrong kind, round, shape or
  dtype: a row of NaN, as absent.

Fault injection (``BYZSGD_FAULT``, for tests only) makes processes misbehave on purpose;
entries are separated by ``;``, each ``action:role=index:round=R[-R2][:key=value]``::

    kill:worker=2:round=3            worker 2 kills itself (SIGKILL) in round 3
    hang:worker=1:round=2:seconds=6  worker 1 sleeps 6 s before sending in round 2
    garbage:worker=3:round=2-4:what=shape   3 values too many in rounds 2 to 4
    kill:server=0:round=7            server 0 kills itself at the start of round 7

``garbage`` spoils the vector as ``what`` says: ``shape`` (3 values too many), ``dtype``
(float64), ``nan`` (all NaN) or ``header`` (a header of an unknown message kind); or attacks
the transport: ``oversize`` (a well-formed message 64 times too long), ``lie`` (a header
announcing a 1 TiB payload, then 1 KiB) or ``junk`` (1 KiB of bytes that are not a header).
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from byzsgd.distributed.protocol import Message, encode_header

ENV = "BYZSGD_FAULT"
OK, NONFINITE, ABSENT, MALFORMED = 0, 1, 2, 3
STATUS = {OK: "ok", NONFINITE: "nonfinite", ABSENT: "absent", MALFORMED: "malformed"}
GARBAGE = ("shape", "dtype", "nan", "header", "oversize", "lie", "junk")

log = logging.getLogger("byzsgd.distributed")


# -- injection ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    """One injected fault: ``action`` by ``role`` ``index`` in rounds ``first..last``."""

    action: str
    role: str
    index: int
    first: int
    last: int
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Fault:
        action, *items = text.strip().split(":")
        if action not in ("kill", "hang", "garbage"):
            raise ValueError(f"{ENV}: unknown action {action!r} in {text!r}; use kill, hang "
                             f"or garbage")
        kv = dict(item.split("=", 1) for item in items)
        roles = [r for r in ("worker", "server") if r in kv]
        if len(roles) != 1 or "round" not in kv:
            raise ValueError(f"{ENV}: {text!r} needs worker=I or server=I, and round=R")
        first, _, last = kv.pop("round").partition("-")
        role = roles[0]
        index = int(kv.pop(role))
        if action == "garbage" and kv.get("what", "shape") not in GARBAGE:
            raise ValueError(f"{ENV}: garbage what= must be one of {', '.join(GARBAGE)}")
        return cls(action, role, index, int(first), int(last or first), kv)

    def applies(self, role: str, index: int, t: int) -> bool:
        return self.role == role and self.index == index and self.first <= t <= self.last


class FaultPlan:
    """The faults of one process (``role``, ``index``), read from ``$BYZSGD_FAULT``."""

    def __init__(self, role: str, index: int, spec: str | None = None) -> None:
        spec = os.environ.get(ENV, "") if spec is None else spec
        faults = [Fault.parse(s) for s in spec.split(";") if s.strip()]
        self.role, self.index = role, index
        self.faults = [f for f in faults if f.role == role and f.index == index]

    def at(self, t: int) -> Fault | None:
        return next((f for f in self.faults if f.applies(self.role, self.index, t)), None)

    def before_send(self, t: int) -> Fault | None:
        """Kill or hang now if planned for round t; return a garbage fault to apply."""
        fault = self.at(t)
        if fault is None:
            return None
        if fault.action == "kill":
            log.warning("fault injection: %s %d kills itself in round %d", self.role,
                        self.index, t)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.action == "hang":
            seconds = float(fault.params.get("seconds", "3600"))
            log.warning("fault injection: %s %d hangs %.1f s in round %d", self.role,
                        self.index, seconds, t)
            time.sleep(seconds)
            return None
        return fault


def garble(fault: Fault, msg: Message) -> Message | bytes:
    """``msg`` (a worker's vector) spoiled as ``fault`` says: a message, or raw bytes to
    send instead of one."""
    what = fault.params.get("what", "shape")
    v = msg.parts[0]
    if what == "oversize":
        msg.parts = [torch.zeros(1, 64 * v.numel() + 4096)]
    elif what == "lie":
        header = encode_header(msg)
        header[7:9] = torch.tensor([1, 1 << 38])  # part 0: 1 x 2^38 float32 = 1 TiB
        return header.numpy().tobytes() + bytes(1024)
    elif what == "junk":
        return bytes(range(256)) * 4
    elif what == "shape":
        msg.parts = [torch.cat([v.reshape(-1), torch.zeros(3)])]
    elif what == "dtype":
        msg.parts = [v.double()]
    elif what == "nan":
        msg.parts = [torch.full_like(v, float("nan"))]
    else:  # header: a wrong kind, which the server must reject as malformed
        msg.kind = 99
    return msg


# -- accounting --------------------------------------------------------------------------------

def validate(parts: list[Tensor] | None, width: int) -> tuple[int, Tensor | None, str]:
    """Status, row and reason of a received vector that should be one float32 row of
    ``width`` values."""
    if parts is None:
        return ABSENT, None, "no vector"
    if len(parts) != 1:
        return MALFORMED, None, f"{len(parts)} parts instead of 1"
    (p,) = parts
    if p.dtype != torch.float32:
        return MALFORMED, None, f"dtype {p.dtype} instead of torch.float32"
    if p.numel() != width or p.shape[0] != 1:
        return MALFORMED, None, f"shape {tuple(p.shape)} instead of (1, {width})"
    row = p.reshape(-1)
    # min and max propagate NaN, and are infinite if any value is: one cheap pass
    if not all(bool(torch.isfinite(m)) for m in torch.aminmax(row)):
        return NONFINITE, row, "non-finite values"
    return OK, row, ""


class FaultLog:
    """Per-round fault counts, totals for summary.json, and ``faults.csv`` (one row per
    worker and round with a fault: round, worker, status, server, detail)."""

    COLUMNS = ("round", "worker", "status", "server", "detail")

    def __init__(self, path: Path | None, rule_f: int) -> None:
        self.path = path
        self.rule_f = rule_f
        self.totals: dict[str, Any] = {"absent": 0, "malformed": 0, "nonfinite": 0,
                                       "rounds_with_faults": 0, "rounds_beyond_f": 0}
        self._last: dict[int, tuple[str, str]] = {}  # worker -> its last fault, logged

    def reset(self, fresh: bool, below: int) -> None:
        """Start the file over, or keep its rows of rounds before ``below`` (resume)."""
        if self.path is None:
            return
        if fresh or not self.path.exists():
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.COLUMNS)
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.reader(fh))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < below]
        with open(self.path, "w", newline="") as fh:
            csv.writer(fh).writerows(kept)

    def record(self, t: int, status: Tensor, details: dict[int, tuple[int, str]],
               byzantine: Tensor) -> dict[str, int]:
        """Count round t's statuses, log and write its faults; return the round's columns."""
        counts = {name: int((status == code).sum()) for code, name in STATUS.items()
                  if code != OK}
        faults = sum(counts.values())
        for name, k in counts.items():
            self.totals[name] += k
        for w in list(self._last):
            if status[w] == OK:
                log.info("round %d: worker %d is back", t, w)
                del self._last[w]
        if faults:
            self.totals["rounds_with_faults"] += 1
            rows = []
            for w in (status != OK).nonzero().flatten().tolist():
                server, detail = details.get(w, (-1, ""))
                rows.append((t, w, STATUS[int(status[w])], server, detail))
                if self._last.get(w) != (STATUS[int(status[w])], detail):
                    self._last[w] = (STATUS[int(status[w])], detail)
                    log.warning("round %d: worker %d %s%s (logged again when it changes)", t,
                                w, STATUS[int(status[w])], f": {detail}" if detail else "")
            if self.path is not None:
                with open(self.path, "a", newline="") as fh:
                    csv.writer(fh).writerows(rows)
        hostile = (status == ABSENT) | (status == MALFORMED)
        replaced = int(hostile.sum())
        hostile[byzantine] = True
        if replaced and int(hostile.sum()) > self.rule_f:
            self.totals["rounds_beyond_f"] += 1
            log.error("!!! round %d: %d absent/malformed rows and %d Byzantine ones make %d "
                      "hostile rows, more than the f=%d the rule tolerates; proceeding anyway",
                      t, replaced, int(byzantine.numel()), int(hostile.sum()), self.rule_f)
        return {**counts, "faults": faults}
