"""Output buffers for the (n, d) results of the pre-aggregators and rules.

A fresh (51, 1e6) float32 tensor from ``torch.empty`` is a new 204 MB mapping whose 50,000
4 KiB pages each fault on first write: on this kind of virtual machine (transparent huge pages
in ``madvise`` mode) filling it costs ~5.7 read passes of the input, where the same fill into
memory from numpy, which asks for huge pages (``madvise(MADV_HUGEPAGE)``) on large
allocations, costs ~1.4 (``x * s`` into each; benchmarks/aggregators.py, load 18). The buffer
is an ordinary tensor that owns its memory (through the numpy array it wraps).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["empty"]

_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def empty(shape: tuple[int, ...], dtype: torch.dtype,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialised tensor: numpy-allocated (huge pages) for CPU float32/float64,
    ``torch.empty`` otherwise."""
    if torch.device(device).type == "cpu" and dtype in _NUMPY:
        return torch.from_numpy(np.empty(shape, dtype=_NUMPY[dtype]))
    return torch.empty(shape, dtype=dtype, device=device)
