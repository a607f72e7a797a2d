"""The first layer of an MLP on mostly-zero inputs, from the non-zero pixels only.

An MNIST digit lights about 19% of its 784 pixels. The first layer of the papers' MLPs,
``a = x W^T + b`` for all n * b samples of a round, is the largest product of the forward
pass; as a dense GEMM it multiplies every zero. Here the training images are kept once, at
build time, as compressed sparse rows (CSR), and each sample's pre-activation is its bias plus
``x_p * W^T[p]`` summed over its non-zero pixels p only: 0.19 of the work, and no (n * b, 784)
input to read. Measured on the round of ``benchmarks/rounds.py`` (3,237 samples, 784 -> 100, 2
threads): 1.8 ms against 3.2 ms for ``torch.addmm`` on the gathered batch.

The kernel adds four pixels' rows at a time into the 100-wide accumulator (one load and store
of the accumulator per four rows instead of per row: the store-to-load latency, not the
arithmetic, bounds the one-at-a-time loop), and runs on byzsgd's kernel threads
(:mod:`byzsgd._pool`) over ranges of samples. Sums are float32, like the GEMM's; the two agree to
float32 rounding (``tests/test_mlpgrad.py``).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit
from torch import Tensor

from byzsgd._pool import group_count, run_ranges

_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
#: Inputs with more non-zero values than this fraction stay dense (a GEMM is faster there).
MAX_DENSITY = 0.3
_GROUPS_PER_THREAD = 8
#: How many encodings :meth:`SparseRows.of` keeps.
ENCODED = 2
_encoded: OrderedDict[int, tuple[weakref.ref[Tensor], int, float, SparseRows | None]] = \
    OrderedDict()
_lock = threading.Lock()


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a``, made read-only (an encoding is shared by the runs of a process)."""
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class SparseRows:
    """A float32 matrix (N, P) as compressed sparse rows: the non-zero values of row i are
    ``values[indptr[i]:indptr[i + 1]]`` in the columns ``indices[...]``."""

    indptr: np.ndarray  # (N + 1,) int64
    indices: np.ndarray  # (nnz,) int32
    values: np.ndarray  # (nnz,) float32
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, x: Tensor, max_density: float = MAX_DENSITY) -> SparseRows | None:
        """The CSR form of ``x`` (N, ...) flattened to (N, P), or None when more than
        ``max_density`` of its values are non-zero (or it is not float32). Its arrays are
        read-only."""
        if x.dtype != torch.float32 or x.dim() < 2 or x.numel() == 0:
            return None
        flat = x.detach().cpu().reshape(x.shape[0], -1)
        mask = flat != 0
        # count_nonzero, not a bool sum: 0.01 against 0.3 CPU-s for MNIST's 47M values
        if int(torch.count_nonzero(mask)) > max_density * flat.numel():
            return None
        indptr = np.zeros(flat.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(mask.numpy(), axis=1), out=indptr[1:])
        rows, cols = mask.nonzero(as_tuple=True)
        return cls(indptr=_frozen(indptr), indices=_frozen(cols.to(torch.int32).numpy()),
                   values=_frozen(flat[rows, cols].numpy()),
                   shape=(flat.shape[0], flat.shape[1]))

    @classmethod
    def of(cls, x: Tensor, max_density: float = MAX_DENSITY) -> SparseRows | None:
        """:meth:`from_dense` of ``x``, encoded once per tensor: a process that runs many
        runs on the same cached training set (:mod:`byzsgd.data._memo`) encodes it once
        (1 CPU-s for MNIST). An encoding is reused while ``x`` lives and has not been
        written (its version counter), for the same ``max_density``; the last
        :data:`ENCODED` are kept. Its arrays are read-only."""
        key = id(x)
        with _lock:
            entry = _encoded.get(key)
            if entry is not None:
                ref, version, density, rows = entry
                if ref() is x and version == x._version and density == max_density:
                    _encoded.move_to_end(key)
                    return rows
                del _encoded[key]
        rows = cls.from_dense(x, max_density)
        with _lock:
            _encoded[key] = (weakref.ref(x), x._version, max_density, rows)
            while len(_encoded) > ENCODED:
                _encoded.popitem(last=False)
        return rows

    @property
    def density(self) -> float:
        return self.values.size / max(1, self.shape[0] * self.shape[1])

    def linear(self, rows: Tensor, weight: Tensor, bias: Tensor,
               dense: Tensor | None = None) -> Tensor:
        """``x[rows] @ weight.T + bias`` (len(rows), out) for a float32 ``weight`` (out, P)
        and ``bias`` (out,), summing over the non-zero values of each row only. With
        ``dense`` (a contiguous float32 tensor of len(rows) * P values) the rows x[rows] are
        also written there, from the same reads (cheaper than gathering the dense rows
        apart: a round of the MNIST benchmark reads 3.9 MB of non-zeros instead of those
        plus 10 MB of dense rows)."""
        out_features, fan_in = weight.shape
        if fan_in != self.shape[1] or bias.shape != (out_features,):
            raise ValueError(f"weight {tuple(weight.shape)} and bias {tuple(bias.shape)} do "
                             f"not fit rows of {self.shape[1]} values")
        idx = rows.reshape(-1).to(torch.int64).numpy()
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.shape[0]):
            raise IndexError(f"row indices must be in [0, {self.shape[0]})")
        wt = weight.detach().T.to(torch.float32).contiguous().numpy()
        b = bias.detach().to(torch.float32).contiguous().numpy()
        if dense is None:
            rows_out = np.empty((0, self.shape[1]), dtype=np.float32)
        elif (dense.dtype != torch.float32 or not dense.is_contiguous()
              or dense.numel() != idx.size * self.shape[1]):
            raise ValueError(f"dense must be a contiguous float32 tensor of "
                             f"{idx.size} x {self.shape[1]} values, got "
                             f"{tuple(dense.shape)} {dense.dtype}")
        else:
            rows_out = dense.numpy().reshape(idx.size, self.shape[1])
        out = np.empty((idx.size, out_features), dtype=np.float32)
        nthreads = max(1, torch.get_num_threads())
        run_ranges(lambda g, lo, hi: _linear(self.indptr, self.indices, self.values, idx, wt,
                                             b, out, rows_out, lo, hi),
                   idx.size, group_count(idx.size, nthreads, _GROUPS_PER_THREAD), nthreads)
        return torch.from_numpy(out)


@njit(fastmath=_FASTMATH, cache=True, nogil=True, boundscheck=False)
def _linear(indptr, indices, values, rows, wt, bias, out, dense, lo, hi):  # pragma: no cover
    """out[r] = bias + sum over the non-zero (p, v) of sample rows[r] of v * wt[p], r in
    [lo, hi); the dense rows written into ``dense`` too unless it has no rows."""
    width = wt.shape[1]
    acc = np.empty(width, dtype=np.float32)
    densify = dense.shape[0] > 0
    for r in range(lo, hi):
        s = rows[r]
        acc[:] = bias
        q = indptr[s]
        end = indptr[s + 1]
        if densify:
            row = dense[r]
            row[:] = 0.0
            for k in range(q, end):
                row[indices[k]] = values[k]
        while q + 4 <= end:
            v0 = values[q]
            v1 = values[q + 1]
            v2 = values[q + 2]
            v3 = values[q + 3]
            w0 = wt[indices[q]]
            w1 = wt[indices[q + 1]]
            w2 = wt[indices[q + 2]]
            w3 = wt[indices[q + 3]]
            for o in range(width):
                acc[o] += (v0 * w0[o] + v1 * w1[o]) + (v2 * w2[o] + v3 * w3[o])
            q += 4
        while q < end:
            v = values[q]
            w = wt[indices[q]]
            for o in range(width):
                acc[o] += v * w[o]
            q += 1
        out[r, :] = acc
