"""Pairwise max-norm distances max_k |x_ik - x_jk| of the rows of an (n, d) array, compiled.

El Mhamdi et al.'s l_inf setting (Hidden Vulnerability 3.3, Appendix C.1) runs Krum, the Medoid
and Brute on these distances, every round. For 57 x 79,510 float32 values this kernel takes
11 ms, ``torch.cdist(p=inf)`` 87 ms and the previous version of this kernel (one pair at a
time, a floating-point maximum) 60 ms, on 2 threads (``python benchmarks/gram.py``). It:

* reads the rows in column chunks that stay in L2 for all pairs, the chunk groups spread over
  the shared thread pool;
* computes 4 x 4 pairs of rows at a time (16 running maxima in registers, 8 loads per column
  instead of 32), rows cut into blocks of 4, the last block filled up with copies of row 0;
* takes the maximum of |x_ik - x_jk| (in float64, whatever the input's precision) on the bits:
  for a non-negative float64 the int64 with the same bits orders the same way, and LLVM
  vectorizes an integer maximum (AVX-512 here) but not a floating-point one under numba's
  fast-math flags (measured: 6 vs 28 us per pair of 79,510 values; 61 us for a plain loop).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic

from byzsgd import kernels
from byzsgd._pool import group_count, run_ranges
from byzsgd.kernels import torch_impl

# Columns per chunk: n rows x 1024 values (4-8 KiB per row) sit in L2 for all pairs.
_CHUNK = 1024
_GROUPS_PER_THREAD = 4


@intrinsic
def _bits(typingctx, x):
    """The bits of a float64 as an int64: the same order for non-negative floats."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return types.int64(types.float64), codegen


@njit(fastmath=True, inline="always")
def _tile44(a0, a1, a2, a3, b0, b1, b2, b3, out, i, j, kl):  # pragma: no cover - compiled
    """out[i + p, j + q] = max(out[...], bits of max_k |a_p[k] - b_q[k]|), p, q < 4."""
    m00 = m01 = m02 = m03 = np.int64(0)
    m10 = m11 = m12 = m13 = np.int64(0)
    m20 = m21 = m22 = m23 = np.int64(0)
    m30 = m31 = m32 = m33 = np.int64(0)
    for k in range(kl):
        x0 = np.float64(a0[k])
        x1 = np.float64(a1[k])
        x2 = np.float64(a2[k])
        x3 = np.float64(a3[k])
        y0 = np.float64(b0[k])
        y1 = np.float64(b1[k])
        y2 = np.float64(b2[k])
        y3 = np.float64(b3[k])
        v = _bits(abs(x0 - y0))
        m00 = m00 if m00 > v else v
        v = _bits(abs(x0 - y1))
        m01 = m01 if m01 > v else v
        v = _bits(abs(x0 - y2))
        m02 = m02 if m02 > v else v
        v = _bits(abs(x0 - y3))
        m03 = m03 if m03 > v else v
        v = _bits(abs(x1 - y0))
        m10 = m10 if m10 > v else v
        v = _bits(abs(x1 - y1))
        m11 = m11 if m11 > v else v
        v = _bits(abs(x1 - y2))
        m12 = m12 if m12 > v else v
        v = _bits(abs(x1 - y3))
        m13 = m13 if m13 > v else v
        v = _bits(abs(x2 - y0))
        m20 = m20 if m20 > v else v
        v = _bits(abs(x2 - y1))
        m21 = m21 if m21 > v else v
        v = _bits(abs(x2 - y2))
        m22 = m22 if m22 > v else v
        v = _bits(abs(x2 - y3))
        m23 = m23 if m23 > v else v
        v = _bits(abs(x3 - y0))
        m30 = m30 if m30 > v else v
        v = _bits(abs(x3 - y1))
        m31 = m31 if m31 > v else v
        v = _bits(abs(x3 - y2))
        m32 = m32 if m32 > v else v
        v = _bits(abs(x3 - y3))
        m33 = m33 if m33 > v else v
    tile = ((m00, m01, m02, m03), (m10, m11, m12, m13), (m20, m21, m22, m23),
            (m30, m31, m32, m33))
    for p in range(4):
        for q in range(4):
            out[i + p, j + q] = max(out[i + p, j + q], tile[p][q])


@njit(fastmath=True, cache=True, nogil=True)
def _linf_range(x, rows, out, lo, hi):  # pragma: no cover - compiled
    """out[i, j] = max(out[i, j], bits of max_{lo <= k < hi} |x[rows[i], k] - x[rows[j], k]|)
    for the 4 x 4 blocks of i <= j; len(rows) is a multiple of 4. ``x`` must be finite."""
    nb = rows.shape[0] // 4
    for k0 in range(lo, hi, _CHUNK):
        k1 = min(hi, k0 + _CHUNK)
        for bi in range(nb):
            i = 4 * bi
            a0 = x[rows[i], k0:k1]
            a1 = x[rows[i + 1], k0:k1]
            a2 = x[rows[i + 2], k0:k1]
            a3 = x[rows[i + 3], k0:k1]
            for bj in range(bi, nb):
                j = 4 * bj
                _tile44(a0, a1, a2, a3, x[rows[j], k0:k1], x[rows[j + 1], k0:k1],
                        x[rows[j + 2], k0:k1], x[rows[j + 3], k0:k1], out, i, j, k1 - k0)


def linf_distances(x: torch.Tensor) -> torch.Tensor:
    """The (n, n) float64 matrix of max-norm distances between the rows of the finite (n, d)
    float tensor ``x`` (differences taken in float64)."""
    if kernels.use_torch(x, "linf_distances"):
        return torch_impl.linf_distances(x)
    xa = x.detach()
    if xa.dtype not in (torch.float32, torch.float64):
        xa = xa.double()
    xa = xa.contiguous().numpy()
    n, d = xa.shape
    rows = np.zeros(-(-n // 4) * 4, dtype=np.int64)  # the last block filled with row 0
    rows[:n] = np.arange(n)
    nthreads = max(1, torch.get_num_threads())
    ngroups = group_count(-(-d // _CHUNK), nthreads, _GROUPS_PER_THREAD)
    parts = np.zeros((ngroups, rows.size, rows.size), dtype=np.int64)
    run_ranges(lambda g, lo, hi: _linf_range(xa, rows, parts[g], lo, hi), d, ngroups, nthreads)
    upper = np.triu(parts.max(axis=0)[:n, :n].view(np.float64), 1)
    return torch.from_numpy(upper + upper.T)
