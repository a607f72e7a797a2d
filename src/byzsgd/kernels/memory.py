"""Output buffers for the (n, d) results of the pre-aggregators and rules.

A fresh (51, 1e6) float32 tensor from ``torch.empty`` is a new 204 MB mapping whose 50,000
4 KiB pages each fault on first write: on this kind of virtual machine (transparent huge pages
in ``madvise`` mode) filling it costs ~5.7 read passes of the input, where the same fill into
memory from numpy, which asks for huge pages (``madvise(MADV_HUGEPAGE)``) on large
allocations, costs ~1.4 (``x * s`` into each; benchmarks/aggregators.py, load 18). The buffer
is an ordinary tensor that owns its memory (through the numpy array it wraps).

:class:`Workspace` keeps one such buffer across calls (a chain's materialized clipping output,
round after round): its pages are faulted in once, not every round.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Workspace", "empty"]

_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def empty(shape: tuple[int, ...], dtype: torch.dtype,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialised tensor: numpy-allocated (huge pages) for CPU float32/float64,
    ``torch.empty`` otherwise."""
    if torch.device(device).type == "cpu" and dtype in _NUMPY:
        return torch.from_numpy(np.empty(shape, dtype=_NUMPY[dtype]))
    return torch.empty(shape, dtype=dtype, device=device)


class Workspace:
    """A buffer reused from call to call: :meth:`get` returns a tensor of the asked shape on
    the same memory while it fits (same dtype and device), a new :func:`empty` one otherwise.
    What :meth:`get` returned last is overwritten by the next :meth:`get`: a caller that hands
    out a result which may alias it copies it first (:meth:`holds`). Copies and pickles of a
    workspace start empty (a buffer is scratch memory, not state)."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def get(self, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device | str = "cpu") -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._buffer
        if (buf is None or buf.dtype != dtype or buf.device != torch.device(device)
                or buf.numel() < numel):
            buf = self._buffer = empty((max(numel, 1),), dtype, device)
        return buf[:numel].view(shape)

    def holds(self, t: torch.Tensor) -> bool:
        """Whether ``t`` lives in this workspace's memory."""
        buf = self._buffer
        return buf is not None and t.device == buf.device and (
            t.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr())

    def release(self) -> None:
        self._buffer = None

    def __deepcopy__(self, memo: dict) -> Workspace:
        return Workspace()

    def __getstate__(self) -> dict:
        return {"_buffer": None}
