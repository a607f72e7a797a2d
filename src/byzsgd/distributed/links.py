"""A server's channels to its workers: one connection (:mod:`.wire`) per worker, with a
receiving and a sending thread each.

The server's round loop never blocks on a worker: each worker's traffic is read and written
in helper threads, and the round loop reads what arrived from one queue of :class:`Event`
with the round's deadline. Whatever a worker does -- never connects, dies (its connection
closes: a ``dead`` event), hangs (nothing arrives: the deadline passes), sends late (a stale
round, dropped), sends garbage (a payload of another shape or dtype: received and rejected;
a header that does not parse, or one that announces more than ``capacity`` bytes: the
connection is closed before a byte of that payload is read) -- the round loop never blocks
on it, and no byte it sends can end the server.

Sends to a worker are posted by the round loop at once and written by the worker's sending
thread. A worker that did not answer the last round and whose last messages are not written
yet is skipped (absent) rather than sent more, so a hung worker holds at most the messages
its connection's buffers take.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from dataclasses import dataclass

from torch import Tensor

from byzsgd.distributed import rendezvous, wire
from byzsgd.distributed.protocol import Message, ProtocolError

log = logging.getLogger("byzsgd.distributed")


@dataclass
class Event:
    """Something a worker's receiving thread saw: a message (``header`` fields and ``parts``),
    a message refused unread (``error``), or the connection's end (``dead``)."""

    worker: int
    kind: int = 0
    round: int = -1
    parts: list[Tensor] | None = None
    extra: int = 0
    aux: int = 0
    error: str = ""
    dead: bool = False


class WorkerLink:
    """Traffic with worker ``worker``; events go to ``events``.

    A message whose header announces more than ``capacity`` payload bytes (twice the largest
    message the worker should send, plus slack: a wrong shape or dtype is still received and
    rejected) or does not parse is refused unread: an ``error`` event for that message, and
    the connection is closed (the stream cannot be resynchronized): the worker is then
    absent every round.
    """

    def __init__(self, worker: int, events: queue.Queue[Event], capacity: int) -> None:
        self.worker = worker
        self.events = events
        self.capacity = capacity
        self.sock: socket.socket | None = None
        self.dead = False
        self.closing = False
        self.reason = "not connected"
        self._outbox: queue.Queue[Message | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket) -> bool:
        """Take the worker's connection (its handshake passed); False (refused) if the
        worker is already connected, or was and is gone."""
        with self._lock:
            if self.sock is not None or self.dead:
                return False
            wire.welcome(sock)
            self.sock = sock
            self.reason = ""
        for target, name in ((self._receive, "recv"), (self._send, "send")):
            threading.Thread(target=target, args=(sock,), daemon=True,
                             name=f"{name}-{self.worker}").start()
        return True

    # -- sending -----------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Everything posted so far has been written to the connection."""
        with self._lock:
            return self._pending == 0

    def post(self, msg: Message, *, queue_behind: bool = False) -> bool:
        """Send ``msg`` to the worker (without waiting: the sending thread writes it); False
        (nothing sent) if the worker is not connected or dead, or still has earlier messages
        to take and ``queue_behind`` is not set."""
        with self._lock:
            if self.sock is None or self.dead or (self._pending and not queue_behind):
                return False
            self._pending += 1
        self._outbox.put(msg)
        return True

    def close(self) -> None:
        """End the sending thread once its queue is empty; the connection's end is no
        longer news."""
        self.closing = True
        self._outbox.put(None)

    def _send(self, sock: socket.socket) -> None:
        while (msg := self._outbox.get()) is not None:
            try:
                if not self.dead:
                    wire.write(sock, msg)
            except wire.ChannelError as e:
                self._die(f"connection lost: {e}")
            finally:
                with self._lock:
                    self._pending -= 1

    # -- receiving ---------------------------------------------------------------------------

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                msg = wire.read(sock, self.capacity)
            except wire.ChannelError as e:
                self._die(f"connection lost: {e}")
                return
            except wire.FramingError as e:
                self._refuse(str(e), e.kind, e.round)
                return
            except ProtocolError as e:
                self._refuse(f"bad header: {e}")
                return
            self.events.put(Event(self.worker, msg.kind, msg.round, msg.parts, msg.extra,
                                  aux=msg.aux))

    def _refuse(self, why: str, kind: int = 0, round: int = -1) -> None:
        """A message that cannot be read safely: reject it (an ``error`` event for it) and
        close the connection."""
        self.events.put(Event(self.worker, kind, round, error=f"{why}; disconnected"))
        self._die(f"disconnected: {why}", quiet=True)

    def _die(self, reason: str, quiet: bool = False) -> None:
        with self._lock:
            first = not self.dead
            self.dead = True
        if not first:
            return
        self.reason = reason
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        log.log(logging.DEBUG if self.closing else logging.WARNING, "worker %d: %s",
                self.worker, reason)
        if not quiet:
            self.events.put(Event(self.worker, dead=True, error=reason))


def accept_workers(server: int, workers: int, events: queue.Queue[Event], capacity: int,
                   connect: float) -> list[WorkerLink]:
    """Server ``server``'s links to the ``workers`` workers: listen on
    :func:`~.rendezvous.listen_host` (``MASTER_ADDR``), say where in the rendezvous store,
    and wait up to ``connect`` s until every worker connected or was refused (the listener
    keeps accepting latecomers for the whole run)."""
    links = [WorkerLink(w, events, capacity) for w in range(workers)]
    listener = wire.Listener(rendezvous.listen_host(), workers, wire.secret(),
                             lambda w, sock: links[w].attach(sock))
    rendezvous.publish(rendezvous.current(), server, listener.address)
    missing = listener.wait(connect)
    if missing:
        log.warning("server %d: worker(s) %s did not connect within %g s; absent until they "
                    "do", server, sorted(missing), connect)
    return links

