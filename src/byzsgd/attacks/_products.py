"""Column sums and centred products of an (m, d) matrix in float64, compiled.

The adaptive attacks need, per round, the benign rows' mean and a few products
``(x_i - c) . v`` or ``sum_i w_i (x_i - c)`` accumulated in float64 (so that rows sharing a
large common component lose no digits). In torch, a float32 matrix summed with
``dtype=torch.float64`` or cast to float64 costs 10-40 read passes; here each block of
columns is read once, in its own precision, and accumulated in float64 on the shared thread
pool. Blocks have a fixed width, so the result does not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from byzsgd._pool import run_groups

_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
#: Columns per block: its slices of x, c and v stay in L2 while they are reused.
_BLOCK = 1 << 14


@njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _column_sums(x, out, lo, hi):  # pragma: no cover - compiled
    for k in range(lo, hi):
        out[k] = 0.0
    for i in range(x.shape[0]):
        for k in range(lo, hi):
            out[k] += x[i, k]


@njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _products(x, c, v, part, lo, hi):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        for q in range(v.shape[0]):
            s = 0.0
            for k in range(lo, hi):
                s += (x[i, k] - c[k]) * v[q, k]
            part[i, q] = s


@njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _combination(x, c, w, total, out, lo, hi):  # pragma: no cover - compiled
    for k in range(lo, hi):
        out[k] = -total * c[k]
    for i in range(x.shape[0]):
        wi = w[i]
        for k in range(lo, hi):
            out[k] += wi * x[i, k]


def _array(x: torch.Tensor) -> np.ndarray:
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    return x.cpu().contiguous().numpy()


def _f64(v: torch.Tensor) -> np.ndarray:
    return v.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()


def _run(task, d: int) -> int:
    blocks = max(1, -(-d // _BLOCK))
    run_groups(lambda g: task(g, g * _BLOCK, min(d, (g + 1) * _BLOCK)), blocks,
               max(1, torch.get_num_threads()))
    return blocks


def column_sums(x: torch.Tensor) -> torch.Tensor:
    """``sum_i x_i`` of the rows of ``x`` (m, d), accumulated and returned in float64."""
    xa = _array(x)
    out = np.empty(xa.shape[1], dtype=np.float64)
    _run(lambda g, lo, hi: _column_sums(xa, out, lo, hi), xa.shape[1])
    return torch.from_numpy(out)


def centered_products(x: torch.Tensor, center: torch.Tensor,
                      vectors: torch.Tensor) -> torch.Tensor:
    """``(x_i - center) . v_q`` for every row i of ``x`` (m, d) and row q of ``vectors``
    (k, d): an (m, k) float64 tensor; one read of ``x``, no (m, d) temporary."""
    xa, c, v = _array(x), _f64(center), _f64(vectors)
    m, d = xa.shape
    blocks = max(1, -(-d // _BLOCK))
    parts = np.zeros((blocks, m, v.shape[0]), dtype=np.float64)
    _run(lambda g, lo, hi: _products(xa, c, v, parts[g], lo, hi), d)
    return torch.from_numpy(parts.sum(axis=0))


def combination(x: torch.Tensor, center: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i (x_i - center)``, a (d,) float64 tensor; one read of ``x``."""
    xa, c, w = _array(x), _f64(center), _f64(weights)
    out = np.empty(xa.shape[1], dtype=np.float64)
    total = float(w.sum())
    _run(lambda g, lo, hi: _combination(xa, c, w, total, out, lo, hi), xa.shape[1])
    return torch.from_numpy(out)
