"""A server's channels to its workers: one receiving and one sending thread per worker.

gloo cannot wait with a timeout without breaking every connection of the process, and a
Work object does not report completion unless waited on (:mod:`.protocol`), so each worker's
traffic is waited on in helper threads, without a timeout, and the server's round loop reads
what arrived from one queue of :class:`Event` with the round's deadline. Whatever a worker
does -- dies (its connection closes: a ``dead`` event), hangs (nothing arrives: the deadline
passes), sends late (a stale round, dropped), sends garbage (a header that does not parse,
or a payload of another shape or dtype) -- the round loop never blocks on it.

Sends to a worker are posted by the round loop at once and waited on by the worker's
sending thread. A worker that did not answer the last round and has not taken its messages
yet is skipped (absent) rather than sent more, so a hung worker holds at most one round's
messages.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from byzsgd.distributed.protocol import (
    FOREVER,
    HEADER_CAPACITY,
    Channel,
    Message,
    ProtocolError,
    decode_header,
    post,
)

log = logging.getLogger("byzsgd.distributed")


@dataclass
class Event:
    """Something a worker's receiving thread saw: a message (``header`` fields and ``parts``),
    a header that did not parse (``error``), or the connection's end (``dead``)."""

    worker: int
    kind: int = 0
    round: int = -1
    parts: list[Tensor] | None = None
    extra: int = 0
    aux: int = 0
    error: str = ""
    dead: bool = False


class WorkerLink:
    """Traffic with worker ``worker`` (rank ``rank``); events go to ``events``.

    ``capacity`` bytes are posted for every part the worker sends, whatever its header
    claims: twice the largest message it should send, plus slack, so that a wrong shape or
    dtype is received and rejected rather than aborting the process inside gloo. A header
    that declares more than that stops the reading from this worker for good (its payload
    cannot be received safely); the worker is then absent every round.
    """

    def __init__(self, worker: int, rank: int, events: queue.Queue[Event],
                 capacity: int) -> None:
        self.worker = worker
        self.rank = rank
        self.events = events
        self.capacity = capacity
        self.dead = False
        self.closing = False
        self.deaf = False  # stopped reading: a header announced an oversized payload
        self.reason = ""
        self._outbox: queue.Queue[list[dist.Work] | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._receive, daemon=True,
                                          name=f"recv-{worker}"),
                         threading.Thread(target=self._send, daemon=True,
                                          name=f"send-{worker}")]
        for thread in self._threads:
            thread.start()

    # -- sending -----------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Everything posted so far has been received by the worker."""
        with self._lock:
            return self._pending == 0

    def post(self, msg: Message, *, queue_behind: bool = False) -> bool:
        """Send ``msg`` to the worker (without waiting: the sending thread waits); False
        (nothing sent) if the worker is dead, or still has earlier messages to take and
        ``queue_behind`` is not set.

        gloo reports a send complete some time after the peer has the data, so a worker that
        already answered may still look busy: queue behind for those."""
        with self._lock:
            if self.dead or (self._pending and not queue_behind):
                return False
            self._pending += 1
        try:
            works = post(msg, self.rank, Channel.TO_WORKER)
        except RuntimeError as e:
            works = []
            self._die(e)
        self._outbox.put(works)
        return not self.dead

    def close(self) -> None:
        """End the sending thread once its queue is empty; the connection's end is no
        longer news."""
        self.closing = True
        self._outbox.put(None)

    def _send(self) -> None:
        while (works := self._outbox.get()) is not None:
            try:
                for work in works:
                    work.wait(FOREVER)
            except RuntimeError as e:
                self._die(e)
            finally:
                with self._lock:
                    self._pending -= 1

    # -- receiving ---------------------------------------------------------------------------

    def _receive(self) -> None:
        """Every message of a worker has one part (the protocol's rule for workers), so the
        receive of the next payload is posted with that of its header: one round trip less.
        A header announcing no part leaves the posted payload receive for the next message,
        one announcing more parts gets them received one by one."""
        tag = int(Channel.TO_SERVER)
        payload: tuple[dist.Work, Tensor] | None = None
        while True:
            buf = torch.empty(HEADER_CAPACITY, dtype=torch.int64)
            try:
                head = dist.irecv(buf, src=self.rank, tag=tag)
                if payload is None:
                    raw = torch.empty(self.capacity, dtype=torch.uint8)
                    payload = (dist.irecv(raw, src=self.rank, tag=tag + 1), raw)
                head.wait(FOREVER)
            except RuntimeError as e:
                self._die(e)
                return
            try:
                header = decode_header(buf)
            except ProtocolError as e:
                self.events.put(Event(self.worker, error=f"bad header: {e}"))
                continue
            parts = []
            for i in range(len(header.specs)):
                size = header.nbytes(i)
                if size > self.capacity:
                    self.deaf = True
                    self.reason = (f"announced a {size}-byte payload (> {self.capacity}); "
                                   f"no longer read")
                    self.events.put(Event(self.worker, header.kind, header.round,
                                          error=self.reason))
                    return
                if size == 0:  # nothing is sent for an empty part
                    parts.append(torch.empty(header.shape(i), dtype=header.dtype(i)))
                    continue
                if payload is None:
                    raw = torch.empty(self.capacity, dtype=torch.uint8)
                    payload = (dist.irecv(raw, src=self.rank, tag=tag + 1), raw)
                work, raw = payload
                payload = None
                if not self._wait(work):
                    return
                parts.append(raw[:size].view(header.dtype(i)).view(header.shape(i)))
            self.events.put(Event(self.worker, header.kind, header.round, parts,
                                  header.extra, aux=header.aux))

    def _wait(self, work: dist.Work) -> bool:
        """Wait for a posted operation with the worker; False if the connection is gone
        (the link is then dead)."""
        try:
            work.wait(FOREVER)
            return True
        except RuntimeError as e:
            self._die(e)
            return False

    def _die(self, error: Exception) -> None:
        with self._lock:
            first = not self.dead
            self.dead = True
        if first:
            self.reason = f"connection lost: {gloo_message(error)}"
            log.log(logging.DEBUG if self.closing else logging.WARNING, "worker %d: %s",
                    self.worker, self.reason)
            self.events.put(Event(self.worker, dead=True, error=self.reason))


def gloo_message(error: Exception) -> str:
    """The gist of a gloo error: its first sentence, without the source location."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).splitlines()[0] if str(error) else "")
    return text.split(". ")[0][:120] or type(error).__name__
