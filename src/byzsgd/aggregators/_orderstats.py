"""Per-coordinate order statistics over the worker axis, vectorized across coordinates.

The coordinate-wise rules (median, trimmed mean, mean around median, Bulyan's second phase) all
need, for every coordinate j, the n values ``x[:, j]`` in sorted order. Sorting each column
separately (``torch.median``/``sort``/``kthvalue`` along dim 0) costs 0.4-0.9 s for a
(51, 1e6) input here. Instead we run one *sorting network* (Batcher's odd-even merge sort,
pruned to the output positions a rule needs) on blocks of coordinates: every compare-exchange
is a branch-free min/max over a block of contiguous columns, which the compiler vectorizes.
The input is read once and never modified; rows may be a subset (Bulyan's selection set),
given as an index array, so no copy of the selected rows is made.

What makes it fast on every vector width (AVX2's 16 registers as well as AVX-512's or NEON's
32; measured at n = 51, d = 1e6 on an AVX2-only Zen 3, ``benchmarks/orderstats.py``):

* the input is read in blocks of :data:`SPAN` columns (long runs per row for the prefetchers)
  and the network runs on tiles of :data:`LANES` columns that stay in L1;
* the first three stages of the network (inside aligned groups of 8 wires) run in registers
  while the rows are copied in, and the next one (merging those groups by 16) in registers too:
  a third of the comparators never touch memory;
* rows given lazily as ``x_i * s_i`` (a chain's clipping factors, ``scales=``) are multiplied
  as they are copied in, in registers: nearly free, and the scaled matrix is never written;
* every compare-exchange stores both outputs unconditionally (see ``_kernel``): a compiler left
  alone turns the minimum's store into a masked store, microcoded and 6x slower on AVX2 and
  unavailable on NEON.

Nothing is x86-specific: the comparators are selects, the loads and stores plain, and the
outputs are those of the pruned network, bit for bit, on every machine.

NaN, the one value without an order, is read as +inf: a NaN sent by a Byzantine worker then
counts as an extreme value, which is exactly the case the papers' bounds cover (Lemma 4 of
Xie et al., Generalized Byzantine-tolerant SGD: with fewer than n/2 Byzantine values per
coordinate the median lies inside the range of the correct values).
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
import torch
from numba import types
from numba.extending import overload
from torch import Tensor

from byzsgd import kernels
from byzsgd._pool import group_count, run_ranges
from byzsgd.kernels import torch_impl

#: Coordinates per sub-block: the network runs on an (m, LANES) tile that stays in L1 (64
#: float32 are 8 AVX2 / 4 AVX-512 / 16 NEON vectors per wire).
LANES = 64
#: Coordinates per block: each of the m input rows is read SPAN values at a time (1024 float32
#: = 4 KiB), long enough runs for the hardware prefetchers to follow 51 rows at once; narrow
#: blocks (64 values per row) made the copy alone 2x one read pass on a Zen 3.
SPAN = 1024
#: Rows sorted in registers while they are copied in (Batcher's first three stages, which never
#: cross an aligned group of 8 wires): 8 values and their temporaries fit 16 vector registers.
GROUP = 8

#: Inputs smaller than this (values) run on the calling thread only.
_SERIAL_VALUES = 1 << 16
#: Block groups per thread, handed out dynamically.
_GROUPS_PER_THREAD = 4

MODE_MEDIAN = 0
MODE_TRIMMED = 1
MODE_MEAMED = 2

#: The variant this module runs. There is one for every CPU: 8 rows sorted in registers fit
#: 16 vector registers (AVX2, SSE) as well as 32 (AVX-512, NEON); 16 rows in registers were
#: 2x slower on AVX2 (spills) and are not used anywhere, as no 32-register machine measured
#: them. Nothing depends on x86: the comparators are selects, the loads and stores plain.
VARIANT = (f"Batcher network, {GROUP} rows sorted in registers on load, merged by 16 in "
           f"registers, then {LANES}-coordinate tiles in L1, blocks of {SPAN}")
kernels.note_variant("orderstats", VARIANT)


def _staged_network(m: int) -> list[tuple[int, int, int]]:
    """Batcher's odd-even merge sort on ``m`` wires as (low, high, p) in order, p the size of
    the sorted runs the comparator's stage merges (1, 2, 4, ...)."""
    pairs: list[tuple[int, int, int]] = []
    p = 1
    while p < m:
        k = p
        while k >= 1:
            for j in range(k % p, m - k, 2 * k):
                for i in range(min(k, m - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k, p))
            k //= 2
        p *= 2
    return pairs


def sorting_network(m: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort network on ``m`` wires, as (low, high) comparators.

    After applying ``x[a], x[b] = min, max`` for every pair in order, ``x`` is sorted. The
    iterative form works for any ``m`` (not only powers of two).
    """
    return [(a, b) for a, b, _ in _staged_network(m)]


def prune(pairs: list[tuple[int, int]], wanted: set[int]) -> list[tuple[int, int]]:
    """Drop the comparators that cannot influence the ``wanted`` output positions.

    Walking the network backwards, a comparator matters iff one of its two wires is still
    needed; its two inputs are then needed too.
    """
    needed = set(wanted)
    kept: list[tuple[int, int]] = []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    kept.reverse()
    return kept


@lru_cache(maxsize=256)
def _plan(m: int, lo: int, hi: int) -> tuple[int, int, np.ndarray]:
    """How the kernel sorts positions ``lo..hi`` (inclusive) of ``m`` wires into place: the
    number of full groups of :data:`GROUP` wires sorted in registers as they are copied in
    (all of Batcher's comparators with p < GROUP inside them), the number of full aligned groups
    of 16 wires merged in registers next (all comparators with p = GROUP inside them: they
    only ever pair wires of one such group, and touch no wire of the partial groups, so moving
    them ahead of those is exact), and the comparators left, in their order.

    The result is the pruned network's, bit for bit: the comparators pruning drops touch wires
    whose values never reach a wanted position, so running them anyway changes nothing there
    (ties between -0.0 and +0.0 included). Pairs are told apart by position, not by value:
    Batcher's network compares some pairs of wires in more than one stage."""
    staged = _staged_network(m)
    needed = set(range(lo, hi + 1))
    kept: list[tuple[int, int, int]] = []
    for a, b, p in reversed(staged):
        if a in needed or b in needed:
            kept.append((a, b, p))
            needed.update((a, b))
    kept.reverse()
    groups = m // GROUP
    blocks16 = m // 16
    rest = [(a, b) for a, b, p in kept if not (p < GROUP and b < groups * GROUP)
            and not (p == GROUP and b < blocks16 * 16)]
    return groups, blocks16, np.asarray(rest, dtype=np.int64).reshape(-1, 2)


def _factor(scales, r):  # pragma: no cover - replaced by the overload in compiled code
    """``scales[r]``, or None when there are no factors (resolved at compile time)."""


def _times(v, t):  # pragma: no cover - replaced by the overload in compiled code
    """``v * t``, or ``v`` itself when ``t`` is None (resolved at compile time)."""


@overload(_factor, inline="always")
def _factor_impl(scales, r):
    if isinstance(scales, types.NoneType):
        return lambda scales, r: None
    return lambda scales, r: scales[r]


@overload(_times, inline="always")
def _times_impl(v, t):
    if isinstance(t, types.NoneType):
        return lambda v, t: v
    return lambda v, t: v * t


@numba.njit(cache=True, nogil=True, inline="always")
def _load(x, rows, scales, groups, buf, j0, w, inf):  # pragma: no cover - compiled
    """Copy columns [j0, j0 + w) of ``x[rows]`` into ``buf`` (sub-block, row, lane), each row
    times its factor ``scales[row]`` (``scales`` None: compiled without the product), NaN
    read as +inf, each full
    group of 8 rows sorted on the way by Batcher's 8-wire network (19 comparators, the first
    three stages of the m-wire network restricted to the group; written out so that the
    compiler keeps the 8 values in registers)."""
    d = x.shape[1]
    m = rows.shape[0]
    nsb = (w + LANES - 1) // LANES
    for g in range(groups):
        r0 = g * 8
        s0 = x[rows[r0]]
        s1 = x[rows[r0 + 1]]
        s2 = x[rows[r0 + 2]]
        s3 = x[rows[r0 + 3]]
        s4 = x[rows[r0 + 4]]
        s5 = x[rows[r0 + 5]]
        s6 = x[rows[r0 + 6]]
        s7 = x[rows[r0 + 7]]
        t0 = _factor(scales, rows[r0])
        t1 = _factor(scales, rows[r0 + 1])
        t2 = _factor(scales, rows[r0 + 2])
        t3 = _factor(scales, rows[r0 + 3])
        t4 = _factor(scales, rows[r0 + 4])
        t5 = _factor(scales, rows[r0 + 5])
        t6 = _factor(scales, rows[r0 + 6])
        t7 = _factor(scales, rows[r0 + 7])
        for s in range(nsb):
            c0 = j0 + s * LANES
            ws = min(LANES, d - c0)
            b = buf[s]
            o0 = b[r0]
            o1 = b[r0 + 1]
            o2 = b[r0 + 2]
            o3 = b[r0 + 3]
            o4 = b[r0 + 4]
            o5 = b[r0 + 5]
            o6 = b[r0 + 6]
            o7 = b[r0 + 7]
            for k in range(ws):
                v0 = _times(s0[c0 + k], t0)
                v1 = _times(s1[c0 + k], t1)
                v2 = _times(s2[c0 + k], t2)
                v3 = _times(s3[c0 + k], t3)
                v4 = _times(s4[c0 + k], t4)
                v5 = _times(s5[c0 + k], t5)
                v6 = _times(s6[c0 + k], t6)
                v7 = _times(s7[c0 + k], t7)
                v0 = v0 if v0 == v0 else inf
                v1 = v1 if v1 == v1 else inf
                v2 = v2 if v2 == v2 else inf
                v3 = v3 if v3 == v3 else inf
                v4 = v4 if v4 == v4 else inf
                v5 = v5 if v5 == v5 else inf
                v6 = v6 if v6 == v6 else inf
                v7 = v7 if v7 == v7 else inf
                # min(q, p) is `p if p < q else q` and max(p, q) is `q if p < q else p`,
                # exactly the comparator of the loop in _kernel (select, no branch)
                v0, v1 = min(v1, v0), max(v0, v1)
                v2, v3 = min(v3, v2), max(v2, v3)
                v4, v5 = min(v5, v4), max(v4, v5)
                v6, v7 = min(v7, v6), max(v6, v7)
                v0, v2 = min(v2, v0), max(v0, v2)
                v1, v3 = min(v3, v1), max(v1, v3)
                v4, v6 = min(v6, v4), max(v4, v6)
                v5, v7 = min(v7, v5), max(v5, v7)
                v1, v2 = min(v2, v1), max(v1, v2)
                v5, v6 = min(v6, v5), max(v5, v6)
                v0, v4 = min(v4, v0), max(v0, v4)
                v1, v5 = min(v5, v1), max(v1, v5)
                v2, v6 = min(v6, v2), max(v2, v6)
                v3, v7 = min(v7, v3), max(v3, v7)
                v2, v4 = min(v4, v2), max(v2, v4)
                v3, v5 = min(v5, v3), max(v3, v5)
                v1, v2 = min(v2, v1), max(v1, v2)
                v3, v4 = min(v4, v3), max(v3, v4)
                v5, v6 = min(v6, v5), max(v5, v6)
                o0[k] = v0
                o1[k] = v1
                o2[k] = v2
                o3[k] = v3
                o4[k] = v4
                o5[k] = v5
                o6[k] = v6
                o7[k] = v7
    for r in range(groups * 8, m):
        src = x[rows[r]]
        t = _factor(scales, rows[r])
        for s in range(nsb):
            c0 = j0 + s * LANES
            ws = min(LANES, d - c0)
            dst = buf[s, r]
            for k in range(ws):
                v = _times(src[c0 + k], t)
                dst[k] = v if v == v else inf


@numba.njit(cache=True, nogil=True, inline="always")
def _merge16(b, blocks, one):  # pragma: no cover - compiled
    """Batcher's stage p = 8 (25 comparators) on each of the first ``blocks`` aligned groups of
    16 wires of the tile ``b`` (wire, lane), whose halves are sorted: written out, so that the
    values stay in registers (a few spill on AVX2; still 10-15% faster than the loop)."""
    for h in range(blocks):
        r0 = h * 16
        w0 = b[r0 + 0]
        w1 = b[r0 + 1]
        w2 = b[r0 + 2]
        w3 = b[r0 + 3]
        w4 = b[r0 + 4]
        w5 = b[r0 + 5]
        w6 = b[r0 + 6]
        w7 = b[r0 + 7]
        w8 = b[r0 + 8]
        w9 = b[r0 + 9]
        w10 = b[r0 + 10]
        w11 = b[r0 + 11]
        w12 = b[r0 + 12]
        w13 = b[r0 + 13]
        w14 = b[r0 + 14]
        w15 = b[r0 + 15]
        for k in range(LANES):
            v0 = w0[k]
            v1 = w1[k]
            v2 = w2[k]
            v3 = w3[k]
            v4 = w4[k]
            v5 = w5[k]
            v6 = w6[k]
            v7 = w7[k]
            v8 = w8[k]
            v9 = w9[k]
            v10 = w10[k]
            v11 = w11[k]
            v12 = w12[k]
            v13 = w13[k]
            v14 = w14[k]
            v15 = w15[k]
            v0, v8 = min(v8, v0), max(v0, v8)
            v1, v9 = min(v9, v1), max(v1, v9)
            v2, v10 = min(v10, v2), max(v2, v10)
            v3, v11 = min(v11, v3), max(v3, v11)
            v4, v12 = min(v12, v4), max(v4, v12)
            v5, v13 = min(v13, v5), max(v5, v13)
            v6, v14 = min(v14, v6), max(v6, v14)
            v7, v15 = min(v15, v7), max(v7, v15)
            v4, v8 = min(v8, v4), max(v4, v8)
            v5, v9 = min(v9, v5), max(v5, v9)
            v6, v10 = min(v10, v6), max(v6, v10)
            v7, v11 = min(v11, v7), max(v7, v11)
            v2, v4 = min(v4, v2), max(v2, v4)
            v3, v5 = min(v5, v3), max(v3, v5)
            v6, v8 = min(v8, v6), max(v6, v8)
            v7, v9 = min(v9, v7), max(v7, v9)
            v10, v12 = min(v12, v10), max(v10, v12)
            v11, v13 = min(v13, v11), max(v11, v13)
            v1, v2 = min(v2, v1), max(v1, v2)
            v3, v4 = min(v4, v3), max(v3, v4)
            v5, v6 = min(v6, v5), max(v5, v6)
            v7, v8 = min(v8, v7), max(v7, v8)
            v9, v10 = min(v10, v9), max(v9, v10)
            v11, v12 = min(v12, v11), max(v11, v12)
            v13, v14 = min(v14, v13), max(v13, v14)
            # wires 0 and 15 meet one comparator here: times one, or a masked store (_kernel)
            w0[k] = v0 * one
            w1[k] = v1
            w2[k] = v2
            w3[k] = v3
            w4[k] = v4
            w5[k] = v5
            w6[k] = v6
            w7[k] = v7
            w8[k] = v8
            w9[k] = v9
            w10[k] = v10
            w11[k] = v11
            w12[k] = v12
            w13[k] = v13
            w14[k] = v14
            w15[k] = v15 * one


@numba.njit(cache=True, nogil=True)
def _kernel(x, rows, scales, groups, blocks16, net, mode, lo, count, out, b0, b1,
            consts):  # pragma: no cover - compiled
    """The rule's value for the columns of blocks [b0, b1) (of SPAN columns) into ``out``,
    on the rows ``x[rows[r]] * scales[rows[r]]`` (``scales`` None: ``x[rows[r]]``; a separate
    compilation, without the product).
    Releases the GIL: several block ranges run at once on the shared thread pool
    (``byzsgd._pool``). ``consts`` holds 1, +inf and 0 in the input's dtype; the 1 is read at
    run time so that the compiler cannot drop the product by it (below)."""
    m = rows.shape[0]
    d = x.shape[1]
    one = consts[0]
    inf = consts[1]
    zero = consts[2]
    # one scratch buffer per call, not per block: allocation is not free
    buf = np.zeros((SPAN // LANES, m, LANES), dtype=x.dtype)
    acc = np.zeros(LANES, dtype=x.dtype)
    med = np.zeros(LANES, dtype=x.dtype)
    best_score = np.zeros(LANES, dtype=x.dtype)
    best = np.zeros(LANES, dtype=x.dtype)
    for blk in range(b0, b1):
        j0 = blk * SPAN
        w = min(SPAN, d - j0)
        _load(x, rows, scales, groups, buf, j0, w, inf)
        for s in range((w + LANES - 1) // LANES):
            b = buf[s]
            _merge16(b, blocks16, one)
            for c in range(net.shape[0]):
                ia = net[c, 0]
                ib = net[c, 1]
                for k in range(LANES):
                    p = b[ia, k]
                    q = b[ib, k]
                    # `* one`: without it the compiler sees that the minimum is p, the value
                    # already stored, where p < q, and stores q under a mask elsewhere; a
                    # masked store is microcoded on AVX2 (6x slower here) and absent on NEON.
                    # Multiplying by 1 is exact (NaN never reaches the network).
                    b[ia, k] = (p if p < q else q) * one
                    b[ib, k] = q if p < q else p
            c0 = j0 + s * LANES
            ws = min(LANES, d - c0)
            if mode == MODE_MEDIAN:
                for k in range(ws):
                    out[c0 + k] = 0.5 * (b[(m - 1) // 2, k] + b[m // 2, k])
                continue
            acc[:] = 0
            if mode == MODE_TRIMMED:
                for r in range(lo, lo + count):
                    for k in range(LANES):
                        acc[k] += b[r, k]
            else:
                # Mean around median: the `count` values nearest to the median form a
                # contiguous window of the sorted column; take the window whose farther end
                # is nearer to the median (the first one on ties).
                for k in range(LANES):
                    med[k] = 0.5 * (b[(m - 1) // 2, k] + b[m // 2, k])
                    best_score[k] = inf
                    best[k] = 0
                for t in range(m - count + 1):
                    start = t * one  # window starts as floats: exact, and select like scores
                    for k in range(LANES):
                        left = med[k] - b[t, k]
                        right = b[t + count - 1, k] - med[k]
                        score = left if left > right else right
                        # both old values read first, the new ones stored whatever `better`
                        # is (times one, as in the network): no masked load or store
                        held = best_score[k]
                        held_start = best[k]
                        better = score < held
                        best_score[k] = (score if better else held) * one
                        best[k] = (start if better else held_start) * one
                # adding 0 for the values outside the window is exact (the sum is never -0)
                for r in range(m):
                    for k in range(LANES):
                        # `&`, not `and`, and the value read either way: no branch, so no
                        # masked load
                        v = b[r, k]
                        inside = (best[k] <= r) & (r < best[k] + count)
                        acc[k] += v if inside else zero
            for k in range(ws):
                out[c0 + k] = acc[k] / count


def _run(x: Tensor, rows: Tensor | None, mode: int, lo: int, count: int,
         sort_lo: int, sort_hi: int, scales: Tensor | None = None) -> Tensor:
    arr = x.detach().numpy()
    factors = (None if scales is None
               else scales.detach().cpu().numpy().astype(arr.dtype))
    m = x.shape[0] if rows is None else int(rows.numel())
    idx = (np.arange(m, dtype=np.int64) if rows is None
           else rows.detach().cpu().numpy().astype(np.int64, copy=False))
    d = x.shape[1]
    out = np.empty(d, dtype=arr.dtype)
    groups, blocks16, net = _plan(m, sort_lo, sort_hi)
    consts = np.array([1.0, np.inf, 0.0], dtype=arr.dtype)
    nblocks = -(-d // SPAN)
    nthreads = 1 if m * d < _SERIAL_VALUES else max(1, torch.get_num_threads())
    run_ranges(lambda g, b0, b1: _kernel(arr, idx, factors, groups, blocks16, net, mode, lo,
                                         count, out, b0, b1, consts),
               nblocks, group_count(nblocks, nthreads, _GROUPS_PER_THREAD), nthreads)
    return torch.from_numpy(out)


def _scaled(x: Tensor, scales: Tensor | None) -> Tensor:
    """``x_i * scales_i`` in x's dtype (the torch implementations' input when scaled)."""
    if scales is None:
        return x
    return x * scales.to(device=x.device, dtype=x.dtype)[:, None]


def coordinate_median(x: Tensor, rows: Tensor | None = None,
                      scales: Tensor | None = None) -> Tensor:
    """Per-coordinate median of ``x[rows]`` (mean of the two middle values when m is even).
    ``scales`` (n,): the rows are ``x_i * scales_i`` in x's dtype, multiplied as they are
    copied in (the same floats as on the scaled matrix, which is never written; the factors
    must be finite: :func:`byzsgd.aggregators._norms.plain_factors`)."""
    if kernels.use_torch(x, "coordinate_median"):
        return torch_impl.coordinate_median(_scaled(x, scales), rows)
    m = x.shape[0] if rows is None else int(rows.numel())
    return _run(x, rows, MODE_MEDIAN, 0, 1, (m - 1) // 2, m // 2, scales)


def coordinate_trimmed_mean(x: Tensor, b: int, rows: Tensor | None = None,
                            scales: Tensor | None = None) -> Tensor:
    """Per coordinate, the mean of the values left after dropping the ``b`` smallest and
    ``b`` largest (requires m > 2b). ``scales`` as for :func:`coordinate_median`."""
    if kernels.use_torch(x, "coordinate_trimmed_mean"):
        return torch_impl.coordinate_trimmed_mean(_scaled(x, scales), b, rows)
    m = x.shape[0] if rows is None else int(rows.numel())
    return _run(x, rows, MODE_TRIMMED, b, m - 2 * b, b, m - b - 1, scales)


def coordinate_mean_around_median(x: Tensor, keep: int, rows: Tensor | None = None,
                                  scales: Tensor | None = None) -> Tensor:
    """Per coordinate, the mean of the ``keep`` values nearest to the median. ``scales`` as
    for :func:`coordinate_median`."""
    if kernels.use_torch(x, "coordinate_mean_around_median"):
        return torch_impl.coordinate_mean_around_median(_scaled(x, scales), keep, rows)
    m = x.shape[0] if rows is None else int(rows.numel())
    return _run(x, rows, MODE_MEAMED, 0, keep, 0, m - 1, scales)


def warmup() -> None:
    """Compile the kernel for float32 and float64 (numba caches it on disk afterwards)."""
    for dtype in (torch.float32, torch.float64):
        x = torch.zeros(3, 2, dtype=dtype)
        coordinate_median(x)
