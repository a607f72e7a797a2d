"""Which device each process of a distributed run uses, and how its tensors reach the wire.

Placement (:func:`process_device`, a pure function of the config's ``device``, the process's
local rank and the number of GPUs): ``cpu`` keeps every process on the CPU; ``cuda`` (and
``auto`` where CUDA is available) gives local rank r the GPU ``cuda:(r mod G)`` -- servers
have the lowest ranks, so with at least S + n GPUs every server and every worker has a GPU of
its own, and with fewer they share them round-robin; ``cuda:N`` pins every process to GPU N.

Transport: GPU tensors are staged through pinned (page-locked) host memory
(:func:`to_host`) and travel over the same channels as CPU tensors -- the hardened TCP
channel between workers and servers (:mod:`.wire`) and gloo among the servers -- never over
NCCL (why: ``docs/distributed.md``, "GPUs"). Received tensors land in host memory and are
moved to the receiver's device where they are used.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from byzsgd.devices import DeviceError, parse


def process_device(spec: str, local_rank: int, cuda_count: int) -> str:
    """The device (``"cpu"``, ``"cuda:K"``, ``"mps"``) of the process with ``local_rank`` on
    a machine with ``cuda_count`` visible GPUs, for the config's device ``spec``.
    :class:`~byzsgd.devices.DeviceError` for ``cuda`` without a GPU or a ``cuda:N`` with
    N >= ``cuda_count``."""
    if local_rank < 0:
        raise ValueError(f"local rank must be >= 0, got {local_rank}")
    kind, index = parse(spec)
    if kind == "auto":
        kind = "cuda" if cuda_count > 0 else "cpu"
    if kind in ("cpu", "mps"):
        return kind
    if cuda_count < 1:
        raise DeviceError(f"device {spec!r}: this machine has no CUDA device")
    if index is not None:
        if index >= cuda_count:
            raise DeviceError(f"device {spec!r} does not exist: this machine has {cuda_count} "
                              f"CUDA device(s), cuda:0 to cuda:{cuda_count - 1}")
        return f"cuda:{index}"
    return f"cuda:{local_rank % cuda_count}"


def local_rank(rank: int) -> int:
    """This process's rank on its machine: ``$LOCAL_RANK`` (torchrun and ``byzsgd run
    --backend distributed`` set it), else its global ``rank``."""
    return int(os.environ.get("LOCAL_RANK", rank))


def this_process_device(spec: str, rank: int) -> str:
    """:func:`process_device` for this process on this machine."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return process_device(spec, local_rank(rank), count)


def to_host(t: Tensor) -> Tensor:
    """``t`` itself when it is in host memory; else a copy in pinned host memory (what the
    sockets and gloo read from; torch's caching host allocator reuses the pinned blocks). The
    copy is complete when this returns."""
    if t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
    host.copy_(t)
    return host
