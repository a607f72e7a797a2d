"""What travels between the processes, and how long anyone waits for it.

A message is a fixed-size int64 *header* followed by zero to three *parts* (2-D tensors sent
as raw bytes). The header says what comes (kind, round, each part's dtype and shape), so a
receiver learns the payload's length (and a wrong shape or dtype) before the payload arrives,
and can refuse it or read it into a buffer of exactly that size::

    header (int64 x 16): MAGIC, kind, round, aux, extra, nparts, (dtype, rows, cols) x 3, 0
    part i: rows x cols values of dtype i, as bytes

On gloo, each direction has its own pair of tags (header, payload), so a message from a
peer is always matched in order with the receive posted for it. A worker's messages have
exactly one part.

Between the servers, messages travel over gloo (point-to-point sends and receives); between
a server and a worker, over a connection of :mod:`.wire`, in the same format. gloo has two
properties the runtime is built around (checked on torch 2.13):

* a receive that times out poisons every connection of the process ("Application timeout
  caused pair closure"), so a server never waits on a gloo peer with a timeout it expects
  to pass;
* a message longer than the buffer posted for it aborts the receiving process inside gloo
  (``op.preamble.length <= op.nbytes``), and the sender chooses the length: so only
  processes that trust each other (the servers) share a gloo group, and a server reads a
  worker's messages over :mod:`.wire`, which checks an announced length before reading.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import IntEnum

import torch
import torch.distributed as dist
from torch import Tensor

from byzsgd.distributed.placement import to_host

MAGIC = 0x42595A53  # "BYZS"
HEADER_LEN = 16
#: int64 values posted for a header from a server (a longer header aborts gloo).
HEADER_CAPACITY = 64
MAX_PARTS = 3
#: Wait "forever" on gloo without a timeout of ours (a longer one overflows gloo's clock).
FOREVER = dt.timedelta(days=30)


#: ``aux`` of a BYZ message by which a Byzantine worker abstains (its part is a dummy).
ABSTAIN = 1


class Kind(IntEnum):
    """Message kinds."""

    ROUND = 1   # server -> worker: round t and the server's shard of theta_t
    VEC = 2     # worker -> server: the worker's honest vector (the server's shard of it)
    KNOW = 3    # server -> Byzantine worker: what the attack may know (aux = own rows)
    BYZ = 4     # Byzantine worker -> server: its Byzantine row (aux = ABSTAIN: none)
    STOP = 5    # anyone -> peer: the run is over
    STEP = 6    # lead -> server: run round t
    DIAG = 7    # server -> lead: the round's diagnostics sums and fault codes
    GATHER = 8  # lead -> server: send your state
    STATE = 9   # server -> lead: shard of theta and of the momentum buffer
    SYNC = 10   # lead -> server: start at round aux from this shard of theta and buffer


class Channel(IntEnum):
    """Header tag of each direction; the payload tag is the header tag + 1."""

    TO_WORKER = 10
    TO_SERVER = 20
    BETWEEN_SERVERS = 30


DTYPES: dict[int, torch.dtype] = {1: torch.float32, 2: torch.float64, 3: torch.float16,
                                  4: torch.bfloat16, 5: torch.int64, 6: torch.int32,
                                  7: torch.uint8, 8: torch.bool}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}


class ProtocolError(ValueError):
    """A header that does not parse (bad magic, unknown dtype, negative size)."""


@dataclass(frozen=True)
class Options:
    """Time limits of a distributed run (none changes its numbers, only how faults show).

    ``deadline``: seconds a server waits for the workers' vectors (and again for the
    Byzantine rows) in a round before it treats the missing ones as absent; ``connect``:
    seconds to set up the process group; ``idle``: seconds a worker waits for the next message
    of a server (evaluations and checkpoints happen meanwhile), and a server for the lead.
    """

    deadline: float = 60.0
    connect: float = 120.0
    idle: float = 1800.0

    def timedelta(self, name: str) -> dt.timedelta:
        return dt.timedelta(seconds=getattr(self, name))


@dataclass
class Message:
    """A message: ``kind`` of ``round``, two small ints, and tensors (sent as 2-D)."""

    kind: int
    round: int
    parts: list[Tensor] = field(default_factory=list)
    aux: int = 0
    #: Free small int: a worker reports its compute time (microseconds) here.
    extra: int = 0


@dataclass(frozen=True)
class Header:
    """A decoded header; ``specs`` holds (dtype code, rows, cols) per part."""

    kind: int
    round: int
    aux: int
    extra: int
    specs: tuple[tuple[int, int, int], ...]

    def nbytes(self, i: int) -> int:
        code, rows, cols = self.specs[i]
        return rows * cols * _itemsize(DTYPES[code])

    def dtype(self, i: int) -> torch.dtype:
        return DTYPES[self.specs[i][0]]

    def shape(self, i: int) -> tuple[int, int]:
        return self.specs[i][1], self.specs[i][2]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _as_2d(t: Tensor) -> Tensor:
    return t.reshape(1, -1) if t.dim() <= 1 else t.flatten(1)


def encode_header(msg: Message) -> Tensor:
    if len(msg.parts) > MAX_PARTS:
        raise ValueError(f"a message has at most {MAX_PARTS} parts, got {len(msg.parts)}")
    values = [MAGIC, int(msg.kind), msg.round, msg.aux, msg.extra, len(msg.parts)]
    for part in msg.parts:
        p = _as_2d(part)
        values += [DTYPE_CODES[p.dtype], p.shape[0], p.shape[1]]
    values += [0] * (HEADER_LEN - len(values))
    return torch.tensor(values, dtype=torch.int64)


def decode_header(buf: Tensor) -> Header:
    """Parse the first :data:`HEADER_LEN` values of ``buf``; :class:`ProtocolError` if they
    are not a header."""
    v = buf[:HEADER_LEN].tolist()
    if v[0] != MAGIC:
        raise ProtocolError(f"bad magic {v[0]:#x}")
    nparts = v[5]
    if not 0 <= nparts <= MAX_PARTS:
        raise ProtocolError(f"{nparts} parts declared (at most {MAX_PARTS})")
    specs = []
    for i in range(nparts):
        code, rows, cols = v[6 + 3 * i: 9 + 3 * i]
        if code not in DTYPES:
            raise ProtocolError(f"unknown dtype code {code}")
        if rows < 0 or cols < 0:
            raise ProtocolError(f"negative shape ({rows}, {cols})")
        specs.append((code, rows, cols))
    return Header(kind=v[1], round=v[2], aux=v[3], extra=v[4], specs=tuple(specs))


def as_bytes(t: Tensor) -> Tensor:
    """``t`` as the raw bytes that travel, in host memory (a view when ``t`` is a contiguous
    CPU tensor; a GPU tensor is staged through pinned memory, :func:`.placement.to_host`)."""
    return _as_2d(to_host(t)).contiguous().view(-1).view(torch.uint8)


def send(msg: Message, dst: int, channel: Channel, timeout: dt.timedelta) -> None:
    """Send ``msg`` to rank ``dst`` and wait until it is received (gloo delivers a message
    once the peer has posted its receive). Raises if the peer is gone or, after ``timeout``,
    does not receive (which poisons this process's connections: only for fatal cases)."""
    for work in post(msg, dst, channel):
        work.wait(timeout)


def post(msg: Message, dst: int, channel: Channel) -> list[dist.Work]:
    """Post the sends of ``msg`` (header, then its parts) at once; the works to wait on."""
    chunks = [encode_header(msg), *(as_bytes(p) for p in msg.parts if p.numel())]
    return [dist.isend(chunk, dst=dst, tag=int(channel) + (i > 0))
            for i, chunk in enumerate(chunks)]


def recv(src: int, channel: Channel, timeout: dt.timedelta) -> Message:
    """Receive the next message of a *trusted* peer (a server), sizes as its header says."""
    buf = torch.empty(HEADER_CAPACITY, dtype=torch.int64)
    dist.irecv(buf, src=src, tag=int(channel)).wait(timeout)
    header = decode_header(buf)
    parts = []
    for i in range(len(header.specs)):
        raw = torch.empty(header.nbytes(i), dtype=torch.uint8)
        if raw.numel():
            dist.irecv(raw, src=src, tag=int(channel) + 1).wait(timeout)
        parts.append(raw.view(header.dtype(i)).view(header.shape(i)))
    return Message(header.kind, header.round, parts, header.aux, header.extra)
