"""Row mixing, the kernel behind bucketing and NNM: ``out_i = w_i * sum_{t < k_i} x_{idx[i, t]}``.

Each output row is summed from its own k_i input rows only, in column chunks that stay in
the L1/L2 cache, on the calling thread plus the pool threads (``byzsgd._pool``, like
``_gram``): the input is read from memory once, each output written once. Bucketing's few
terms per row go through ``_mix_range``; NNM's n - f through ``_mix_many_range``, which adds
them four at a time (one load and store of the output chunk per four input rows). Both loop
over slices from index 0 so that LLVM vectorizes them (indexing ``out[i, c]`` with c from
c0 compiled to scalar code, 4x slower). Measured at n = 51, d = 1e6, float32, load ~15: the
mixing of NNM 650 ms against 900-1900 ms for MKL's dense (n, n) x (n, d) GEMM into the same
buffer; bucketing (s = 2) 1.3 reads of x. Every term is scaled before it is added
(``w * x``), so an average holding float32-max rows among others stays finite; a non-finite
row reaches only the outputs that list it (no 0 * inf elsewhere).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from byzsgd import kernels
from byzsgd._pool import run_ranges
from byzsgd.kernels import torch_impl

from ._gram import _as_array

#: Columns per chunk: 1024 float32 (4 KiB) per row.
CHUNK = 1024
#: Below this many (output row, input row, column) terms, one thread.
_SERIAL_WORK = 1 << 22


@njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def _mix_range(x, idx, counts, w, out, lo, hi, chunk):  # pragma: no cover - compiled
    # Loops over slices from 0: numba then knows the indices are non-negative (no
    # wraparound test per access) and LLVM vectorizes them (4x faster than indexing
    # out[i, c] with c from c0, which compiled to scalar code).
    d = x.shape[1]
    m = idx.shape[0]
    for b in range(lo, hi):
        c0 = b * chunk
        c1 = min(c0 + chunk, d)
        span = c1 - c0
        for i in range(m):
            wi = w[i]
            o = out[i, c0:c1]
            a = x[idx[i, 0], c0:c1]
            for c in range(span):
                o[c] = a[c] * wi
            for t in range(1, counts[i]):
                a = x[idx[i, t], c0:c1]
                for c in range(span):
                    o[c] += a[c] * wi


@njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def _mix_many_range(x, idx, counts, w, out, lo, hi, chunk):  # pragma: no cover - compiled
    """``_mix_range`` with the terms after the first added four at a time (one load and
    store of the output per four rows: NNM's n - f terms per output row)."""
    d = x.shape[1]
    m = idx.shape[0]
    for b in range(lo, hi):
        c0 = b * chunk
        c1 = min(c0 + chunk, d)
        span = c1 - c0
        for i in range(m):
            wi = w[i]
            k = counts[i]
            o = out[i, c0:c1]
            a = x[idx[i, 0], c0:c1]
            for c in range(span):
                o[c] = a[c] * wi
            t = 1
            while t + 4 <= k:
                a0 = x[idx[i, t], c0:c1]
                a1 = x[idx[i, t + 1], c0:c1]
                a2 = x[idx[i, t + 2], c0:c1]
                a3 = x[idx[i, t + 3], c0:c1]
                for c in range(span):
                    o[c] += (a0[c] * wi + a1[c] * wi) + (a2[c] * wi + a3[c] * wi)
                t += 4
            while t < k:
                a = x[idx[i, t], c0:c1]
                for c in range(span):
                    o[c] += a[c] * wi
                t += 1


def mix_rows(x: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """``out[i] = mean of x[groups[i]]`` for each (non-empty) group, (len(groups), d).
    Groups of more than 4 rows (NNM) take the kernel that adds four terms at a time."""
    if kernels.use_torch(x, "mix_rows"):
        return torch_impl.mix_rows(x, groups)
    d = x.shape[1]
    m = len(groups)
    k = max(len(g) for g in groups)
    idx = np.zeros((m, k), dtype=np.int64)
    counts = np.zeros(m, dtype=np.int64)
    for i, g in enumerate(groups):
        idx[i, : len(g)] = g
        counts[i] = len(g)
    xa = _as_array(x)
    w = (1.0 / counts).astype(xa.dtype)
    out = np.empty((m, d), dtype=xa.dtype)
    nchunks = -(-d // CHUNK)
    work = int(counts.sum()) * d
    nthreads = 1 if work < _SERIAL_WORK else max(1, torch.get_num_threads())
    ngroups = 1 if nthreads == 1 else min(nchunks, 4 * nthreads)
    kernel = _mix_many_range if k > 4 else _mix_range
    run_ranges(lambda g, lo, hi: kernel(xa, idx, counts, w, out, lo, hi, CHUNK),
               nchunks, ngroups, nthreads)
    return torch.from_numpy(out)
