"""The channel between a parameter server and a worker: a TCP connection of their own.

Why not gloo: gloo aborts the receiving *process* when a message is longer than the buffer
posted for it (``op.preamble.length <= op.nbytes``: an exception thrown on gloo's event-loop
thread, which nothing catches), and the *sender* chooses the length. A server that received
worker messages over gloo could therefore be taken down by one Byzantine worker with one
message, whatever buffer it posted. So workers are not members of the gloo process group at
all: the servers form it among themselves (they trust each other), and each worker talks to
each server over one connection of this module, on which the server

* reads a fixed-size header (:data:`~.protocol.HEADER_LEN` int64 values, the
  :func:`~.protocol.encode_header` format), which announces every part's dtype and shape;
* checks the announced payload against a limit before it reads a byte of it (``limit``:
  twice the expected size plus slack, set from the expected d), and reads the payload into
  buffers of exactly the announced sizes;
* closes the connection when the framing breaks (a header that does not parse, a payload
  over the limit): that worker alone is gone, absent every later round.

A connection starts with a handshake; the server speaks first::

    server: HELLO (8 bytes), nonce (32 random bytes)
    worker: HELLO, worker index (int64, little-endian), HMAC-SHA256(token, nonce + index)
    server: ACCEPT (1 byte), or it closes the connection

``token`` is the run's shared secret (``$BYZSGD_TOKEN``; the local launcher draws one per
run), compared in constant time (:func:`hmac.compare_digest`); it never travels itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable

import torch
from torch import Tensor

from byzsgd.distributed.protocol import (
    HEADER_LEN,
    Message,
    ProtocolError,
    as_bytes,
    decode_header,
    encode_header,
)

log = logging.getLogger("byzsgd.distributed")

#: The environment variable holding the run's shared secret.
TOKEN_ENV = "BYZSGD_TOKEN"
HELLO = b"BYZSGD\x00\x01"
ACCEPT = b"\x01"
NONCE_LEN = 32
_MAC_LEN = 32
_HEADER_BYTES = 8 * HEADER_LEN


class ChannelError(RuntimeError):
    """The connection is gone: closed by the peer, reset, or silent past the timeout."""


class FramingError(ProtocolError):
    """A message whose header announces more payload than the receiver accepts; ``kind`` and
    ``round`` are the header's."""

    def __init__(self, text: str, kind: int = 0, round: int = -1) -> None:
        super().__init__(text)
        self.kind = kind
        self.round = round


def secret() -> bytes:
    """This process's copy of the run's shared secret (empty: none was set)."""
    return os.environ.get(TOKEN_ENV, "").encode()


def _mac(token: bytes, nonce: bytes, index: int) -> bytes:
    return hmac.new(token, nonce + struct.pack("<q", index), hashlib.sha256).digest()


# -- messages ----------------------------------------------------------------------------------

def write(sock: socket.socket, msg: Message) -> None:
    """Send ``msg``: its header, then each part's bytes (no copy of the parts)."""
    try:
        sock.sendall(encode_header(msg).numpy().tobytes())
        for part in msg.parts:
            if part.numel():
                sock.sendall(memoryview(as_bytes(part).numpy()))
    except OSError as e:  # socket.timeout included
        raise ChannelError(_why(e)) from e


def write_raw(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` as it is (fault injection: bytes that are not a message)."""
    try:
        sock.sendall(data)
    except OSError as e:
        raise ChannelError(_why(e)) from e


def read(sock: socket.socket, limit: int | None = None) -> Message:
    """The next message on ``sock``. With ``limit``, a header that announces more than
    ``limit`` payload bytes raises :class:`FramingError` before any payload is read (the
    connection must then be closed: the stream cannot be resynchronized); a header that does
    not parse raises :class:`~.protocol.ProtocolError`; a lost connection
    :class:`ChannelError`."""
    header = decode_header(_read_exact(sock, _HEADER_BYTES).view(torch.int64))
    sizes = [header.nbytes(i) for i in range(len(header.specs))]
    if limit is not None and sum(sizes) > limit:
        raise FramingError(f"announced a {sum(sizes)}-byte payload (limit {limit})",
                           header.kind, header.round)
    parts = [_read_exact(sock, size).view(header.dtype(i)).view(header.shape(i))
             for i, size in enumerate(sizes)]
    return Message(header.kind, header.round, parts, header.aux, header.extra)


def _read_exact(sock: socket.socket, n: int) -> Tensor:
    """``n`` bytes from ``sock`` into a fresh uint8 tensor."""
    buf = torch.empty(n, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    got = 0
    try:
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ChannelError("connection closed by peer")
            got += k
    except OSError as e:
        raise ChannelError(_why(e)) from e
    return buf


def _why(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return error.strerror or type(error).__name__


def _configure(sock: socket.socket, timeout: float | None) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)


# -- the worker's side -------------------------------------------------------------------------

def connect(host: str, port: int, index: int, token: bytes, timeout: float) -> socket.socket:
    """Open worker ``index``'s connection to the server at ``host:port``; ``timeout`` bounds
    every later read and write on it. :class:`ChannelError` if the server refuses it."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise ChannelError(f"cannot connect to {host}:{port}: {_why(e)}") from e
    _configure(sock, timeout)
    hello = bytes(_read_exact(sock, len(HELLO) + NONCE_LEN).numpy())
    if hello[:len(HELLO)] != HELLO:
        sock.close()
        raise ChannelError(f"{host}:{port} is not a byzsgd server")
    nonce = hello[len(HELLO):]
    try:
        sock.sendall(HELLO + struct.pack("<q", index) + _mac(token, nonce, index))
        answer = _read_exact(sock, len(ACCEPT))
    except ChannelError as e:
        sock.close()
        raise ChannelError(f"the server at {host}:{port} refused worker {index} (a wrong "
                           f"${TOKEN_ENV}?): {e}") from e
    if bytes(answer.numpy()) != ACCEPT:
        sock.close()
        raise ChannelError(f"the server at {host}:{port} refused worker {index}")
    return sock


# -- the server's side -------------------------------------------------------------------------

def listen(host: str) -> socket.socket:
    """A listening socket on ``host`` (an address of this machine), any free port; on every
    interface (with a warning) if ``host`` is not an address of this machine."""
    try:
        return socket.create_server((host, 0), backlog=128)
    except OSError as e:
        log.warning("cannot listen on %s (%s): listening on every interface", host, _why(e))
        return socket.create_server(("", 0), backlog=128)


def welcome(sock: socket.socket) -> None:
    """Tell a worker whose handshake passed that it is in; no timeout from now on."""
    sock.sendall(ACCEPT)
    _configure(sock, None)


class Listener:
    """Accepts the workers' connections to one server, for the whole run.

    Each connection is greeted in a thread of its own (at most ``greeting`` seconds), and
    handed to ``admit(worker, sock)`` if its handshake names a worker in ``range(workers)``
    with the right MAC; ``admit`` returns False to refuse it (that worker is already
    connected), or calls :func:`welcome` on the socket and takes it. ``seen`` holds the
    workers that connected or were refused at least once.
    """

    def __init__(self, host: str, workers: int, token: bytes,
                 admit: Callable[[int, socket.socket], bool], greeting: float = 10.0) -> None:
        self.sock = listen(host)
        self.workers = workers
        self.token = token
        self.admit = admit
        self.greeting = greeting
        self.seen: set[int] = set()
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="accept")
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def wait(self, timeout: float) -> set[int]:
        """Wait until every worker connected or was refused, at most ``timeout`` s; the
        workers not seen."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.seen) == self.workers, timeout=timeout)
            return set(range(self.workers)) - self.seen

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._greet, args=(conn, peer), daemon=True,
                             name="greet").start()

    def _greet(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        index = -1
        try:
            _configure(conn, self.greeting)
            nonce = os.urandom(NONCE_LEN)
            conn.sendall(HELLO + nonce)
            hello = bytes(_read_exact(conn, len(HELLO) + 8 + _MAC_LEN).numpy())
            magic, rest = hello[:len(HELLO)], hello[len(HELLO):]
            (index,) = struct.unpack("<q", rest[:8])
            if magic != HELLO:
                why = "not a byzsgd worker"
            elif not 0 <= index < self.workers:
                why = f"worker index {index} outside 0..{self.workers - 1}"
            elif not hmac.compare_digest(rest[8:], _mac(self.token, nonce, index)):
                why = f"wrong token (${TOKEN_ENV})"
            else:
                why = "" if self.admit(index, conn) else "already connected"
        except (OSError, ChannelError) as e:
            why = f"handshake failed: {e}"
        if why:
            log.warning("refused a connection from %s:%d claiming worker %d: %s", *peer[:2],
                        index, why)
            conn.close()
        if 0 <= index < self.workers:
            with self.changed:
                self.seen.add(index)
                self.changed.notify_all()
