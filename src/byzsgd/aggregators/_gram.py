"""Gram matrix of centered gradient rows, the kernel behind the distance-based rules.

Krum, Multi-Krum, the Medoid, the geometric median (Weiszfeld on the Gram matrix) and Bulyan
all need every pairwise squared distance of the n worker gradients. They get them from a Gram
matrix, ``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij``, which costs one pass over the (n, d) input
instead of n^2 / 2 passes.

Why centered. ``G_ii + G_jj - 2 G_ij`` subtracts numbers of the size of ``||x_i||^2`` to get a
number of the size of ``||x_i - x_j||^2``. Honest gradients share a large common component (the
true gradient) and differ by a small noise, so in float32 the subtraction cancels: with rows
``1e3 + 1e-3 * noise`` the distances computed from ``x @ x.T`` are pure rounding noise. Taking
the Gram matrix of ``x_i - c`` for a point ``c`` near the rows (for instance one of the rows,
or their coordinate-wise median) leaves the distances unchanged in exact arithmetic and removes
the common component before anything is rounded.

How it is fast. For n ~ 50 and d ~ 1e6, ``X @ X.T`` is limited by the memory traffic of GEMM
packing a short, wide matrix, not by arithmetic. This kernel reads X exactly once:

* d is cut into chunks of ``Kc`` columns (4 KiB of each row), small enough that all n rows of a
  chunk (~200 KiB) stay in the core's L2 cache;
* the centered chunk ``x[:, chunk] - c[chunk]`` is written into a small per-worker buffer as a
  side effect of the diagonal tiles (no separate copy pass);
* only the upper triangle is computed, in register tiles of 4x4, 4x3 and 3x3 rows (rows are
  cut into blocks of 4 and, for the remainder, of 3, so no work is spent on padding rows); each
  tile keeps 9 to 16 independent accumulators written as scalar loops over k that LLVM
  vectorizes (AVX-512 on Zen 4) because ``fastmath`` allows reassociation;
* while a chunk is being multiplied, software prefetches spread over its tiles pull the next
  chunk of every row (and of ``c``) from memory into L2, so the memory reads overlap the
  arithmetic;
* each chunk's float32 partial sums (at most ``Kc`` terms, split over the SIMD lanes) are added
  into float64 totals, so the rounding error does not grow with d;
* the chunks are cut into contiguous groups handed out dynamically to
  ``torch.get_num_threads()`` threads; each group has its own (n, n) float64 accumulator and
  the groups are summed in a fixed order (same result whichever thread ran which group). The
  compiled kernel releases the GIL and runs on the calling thread plus a small Python thread
  pool rather than under numba's ``parallel=True``: same speed, half the compile time, load
  balancing, and no second OpenMP runtime next to torch's (numba's OpenMP layer is not
  fork-safe). Small problems run on the calling thread only.

Non-finite inputs (Byzantine workers may send NaN, inf or 1e30) are allowed: the fast-math flags
exclude ``nnan``/``ninf``, every product involves exactly two rows, so a non-finite or
overflowing row only turns its own row and column of G into inf/NaN. The center must be finite
(a non-finite center coordinate contaminates every row).
"""

from __future__ import annotations

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from byzsgd import kernels
from byzsgd._pool import run_ranges
from byzsgd.kernels import torch_impl

__all__ = ["centered_gram", "warmup"]

# Reassociation (needed to vectorize the dot-product reductions) and FMA contraction, but not
# the no-NaN / no-inf assumptions: Byzantine rows may be non-finite and must stay confined.
_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

# Bytes of each row per chunk: n rows x 4 KiB ~ 200 KiB for n = 51 sits in L2 together with the
# next chunk being prefetched (measured: 4 KiB and 6 KiB are equivalent, 8 KiB is slower).
CHUNK_BYTES = kernels.GRAM_CHUNK_BYTES
# Extra elements at the end of each buffer row: a 4 KiB row stride puts element k of every row
# in the same L1 set and makes the stores of the fused copy alias the loads (4K aliasing).
_ROW_PAD_BYTES = 64
_CACHE_LINE = 64
# Below this many multiply-adds (n(n+1)/2 * d, ~0.2 ms on one core) the kernel runs on the
# calling thread only: waking a worker thread costs ~10 us normally, but up to ~16 ms on a
# virtual machine whose idle vCPU has been descheduled by the host.
_SERIAL_WORK = 1 << 23
# Chunk groups per thread, handed out dynamically (see ``_run``).
_GROUPS_PER_THREAD = 8


@intrinsic
def _prefetch(typingctx, arr, i):
    """Hint the CPU to bring the cache line holding ``arr[i]`` (1-D) into L2 (prefetcht1)."""
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, rw=read, locality=2 -> prefetcht1, cache type=data)
        builder.call(fn, [ptr, i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------------------------------------
# Register tiles. ``kl`` is the chunk length; the accumulators are float32 for float32 input
# (``zero`` carries the dtype) and are added into the float64 accumulator ``acc`` at the end.
# Diagonal tiles also write the centered rows into the chunk buffer (fused copy).
# ---------------------------------------------------------------------------------------------


@njit(fastmath=_FASTMATH, inline="always")
def _diag4(r0, r1, r2, r3, cs, b0, b1, b2, b3, acc, j, zero, kl):
    s00 = s01 = s02 = s03 = zero
    s11 = s12 = s13 = zero
    s22 = s23 = zero
    s33 = zero
    for k in range(kl):
        ck = cs[k]
        y0 = r0[k] - ck
        y1 = r1[k] - ck
        y2 = r2[k] - ck
        y3 = r3[k] - ck
        b0[k] = y0
        b1[k] = y1
        b2[k] = y2
        b3[k] = y3
        s00 += y0 * y0
        s01 += y0 * y1
        s02 += y0 * y2
        s03 += y0 * y3
        s11 += y1 * y1
        s12 += y1 * y2
        s13 += y1 * y3
        s22 += y2 * y2
        s23 += y2 * y3
        s33 += y3 * y3
    acc[j, j] += s00
    acc[j, j + 1] += s01
    acc[j, j + 2] += s02
    acc[j, j + 3] += s03
    acc[j + 1, j + 1] += s11
    acc[j + 1, j + 2] += s12
    acc[j + 1, j + 3] += s13
    acc[j + 2, j + 2] += s22
    acc[j + 2, j + 3] += s23
    acc[j + 3, j + 3] += s33


@njit(fastmath=_FASTMATH, inline="always")
def _diag3(r0, r1, r2, cs, b0, b1, b2, acc, j, zero, kl):
    s00 = s01 = s02 = zero
    s11 = s12 = zero
    s22 = zero
    for k in range(kl):
        ck = cs[k]
        y0 = r0[k] - ck
        y1 = r1[k] - ck
        y2 = r2[k] - ck
        b0[k] = y0
        b1[k] = y1
        b2[k] = y2
        s00 += y0 * y0
        s01 += y0 * y1
        s02 += y0 * y2
        s11 += y1 * y1
        s12 += y1 * y2
        s22 += y2 * y2
    acc[j, j] += s00
    acc[j, j + 1] += s01
    acc[j, j + 2] += s02
    acc[j + 1, j + 1] += s11
    acc[j + 1, j + 2] += s12
    acc[j + 2, j + 2] += s22


@njit(fastmath=_FASTMATH, inline="always")
def _tile44(a0, a1, a2, a3, b0, b1, b2, b3, acc, i, j, zero, kl):
    s00 = s01 = s02 = s03 = zero
    s10 = s11 = s12 = s13 = zero
    s20 = s21 = s22 = s23 = zero
    s30 = s31 = s32 = s33 = zero
    for k in range(kl):
        x0 = a0[k]
        x1 = a1[k]
        x2 = a2[k]
        x3 = a3[k]
        y0 = b0[k]
        y1 = b1[k]
        y2 = b2[k]
        y3 = b3[k]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s03 += x0 * y3
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s13 += x1 * y3
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s23 += x2 * y3
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
        s33 += x3 * y3
    acc[i, j] += s00
    acc[i, j + 1] += s01
    acc[i, j + 2] += s02
    acc[i, j + 3] += s03
    acc[i + 1, j] += s10
    acc[i + 1, j + 1] += s11
    acc[i + 1, j + 2] += s12
    acc[i + 1, j + 3] += s13
    acc[i + 2, j] += s20
    acc[i + 2, j + 1] += s21
    acc[i + 2, j + 2] += s22
    acc[i + 2, j + 3] += s23
    acc[i + 3, j] += s30
    acc[i + 3, j + 1] += s31
    acc[i + 3, j + 2] += s32
    acc[i + 3, j + 3] += s33


@njit(fastmath=_FASTMATH, inline="always")
def _tile43(a0, a1, a2, a3, b0, b1, b2, acc, i, j, zero, kl):
    s00 = s01 = s02 = zero
    s10 = s11 = s12 = zero
    s20 = s21 = s22 = zero
    s30 = s31 = s32 = zero
    for k in range(kl):
        x0 = a0[k]
        x1 = a1[k]
        x2 = a2[k]
        x3 = a3[k]
        y0 = b0[k]
        y1 = b1[k]
        y2 = b2[k]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
    acc[i, j] += s00
    acc[i, j + 1] += s01
    acc[i, j + 2] += s02
    acc[i + 1, j] += s10
    acc[i + 1, j + 1] += s11
    acc[i + 1, j + 2] += s12
    acc[i + 2, j] += s20
    acc[i + 2, j + 1] += s21
    acc[i + 2, j + 2] += s22
    acc[i + 3, j] += s30
    acc[i + 3, j + 1] += s31
    acc[i + 3, j + 2] += s32


@njit(fastmath=_FASTMATH, inline="always")
def _tile33(a0, a1, a2, b0, b1, b2, acc, i, j, zero, kl):
    s00 = s01 = s02 = zero
    s10 = s11 = s12 = zero
    s20 = s21 = s22 = zero
    for k in range(kl):
        x0 = a0[k]
        x1 = a1[k]
        x2 = a2[k]
        y0 = b0[k]
        y1 = b1[k]
        y2 = b2[k]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
    acc[i, j] += s00
    acc[i, j + 1] += s01
    acc[i, j + 2] += s02
    acc[i + 1, j] += s10
    acc[i + 1, j + 1] += s11
    acc[i + 1, j + 2] += s12
    acc[i + 2, j] += s20
    acc[i + 2, j + 1] += s21
    acc[i + 2, j + 2] += s22


@njit(fastmath=_FASTMATH, inline="always")
def _chunk(x, xf, c, buf, acc, n4, nb, k0, kl, pk0, pkl, line, zero):
    """Add the upper-triangular Gram block of columns [k0, k0 + kl) into ``acc``.

    Tiles are visited column by column of the block triangle, each column starting with its
    diagonal tile, which centers and copies its rows into ``buf``. Lines of the next chunk
    [pk0, pk0 + pkl) of every row are prefetched evenly across the tiles (pkl = 0: none).
    """
    n, d = x.shape
    cs = c[k0 : k0 + kl]
    # Prefetch cursor over the next chunk: row ``pr``, column ``pc``; ``ppt`` lines per tile.
    pend = pk0 + pkl
    pr = n if pkl == 0 else 0
    pc = pk0
    ppt = (n * ((pkl + line - 1) // line) + nb * (nb + 1) // 2 - 1) // (nb * (nb + 1) // 2)
    for kk in range(pk0, pend, line):
        _prefetch(c, kk)
    for bj in range(nb):
        j = 4 * bj if bj < n4 else 4 * n4 + 3 * (bj - n4)
        if bj < n4:
            _diag4(x[j, k0 : k0 + kl], x[j + 1, k0 : k0 + kl], x[j + 2, k0 : k0 + kl],
                   x[j + 3, k0 : k0 + kl], cs, buf[j], buf[j + 1], buf[j + 2], buf[j + 3],
                   acc, j, zero, kl)
        else:
            _diag3(x[j, k0 : k0 + kl], x[j + 1, k0 : k0 + kl], x[j + 2, k0 : k0 + kl], cs,
                   buf[j], buf[j + 1], buf[j + 2], acc, j, zero, kl)
        for bi in range(bj + 1):
            # Spread the next chunk's prefetches (one tile = one slot, the diagonal included).
            rem = ppt
            while rem > 0 and pr < n:
                end = min(pc + rem * line, pend)
                base = pr * d
                for kk in range(pc, end, line):
                    _prefetch(xf, base + kk)
                rem -= (end - pc + line - 1) // line
                pc = end
                if pc >= pend:
                    pr += 1
                    pc = pk0
            if bi == bj:
                continue
            i = 4 * bi if bi < n4 else 4 * n4 + 3 * (bi - n4)
            if bj < n4:
                _tile44(buf[i], buf[i + 1], buf[i + 2], buf[i + 3],
                        buf[j], buf[j + 1], buf[j + 2], buf[j + 3], acc, i, j, zero, kl)
            elif bi < n4:
                _tile43(buf[i], buf[i + 1], buf[i + 2], buf[i + 3],
                        buf[j], buf[j + 1], buf[j + 2], acc, i, j, zero, kl)
            else:
                _tile33(buf[i], buf[i + 1], buf[i + 2],
                        buf[j], buf[j + 1], buf[j + 2], acc, i, j, zero, kl)


@njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _gram_range(x, c, acc, kc, pad, line, lo, hi, zero):  # pragma: no cover - compiled
    """Add the upper-triangular Gram sums of ``x - c`` over chunks [lo, hi) into ``acc``.

    ``x`` has n = 4 * n4 + 3 * n3 rows (the caller pads n in {1, 2, 5} with rows equal to
    ``c``); ``acc`` is an (n, n) float64 array owned by this call. Runs without the GIL, so
    several ranges run in parallel on Python threads.
    """
    n, d = x.shape
    n3 = (4 - n % 4) % 4
    n4 = (n - 3 * n3) // 4
    nb = n4 + n3
    xf = x.reshape(n * d)
    buf = np.empty((n, kc + pad), dtype=x.dtype)
    for ch in range(lo, hi):
        k0 = ch * kc
        kl = min(kc, d - k0)
        pkl = min(kc, d - k0 - kc) if ch + 1 < hi else 0
        _chunk(x, xf, c, buf, acc, n4, nb, k0, kl, k0 + kc, pkl, line, zero)


def _run(xa: np.ndarray, ca: np.ndarray, nthreads: int) -> np.ndarray:
    """Upper-triangular Gram sums of ``xa - ca`` (float64, lower triangle left at zero).

    The chunks are cut into ``_GROUPS_PER_THREAD`` contiguous groups per thread, taken from a
    shared counter by the calling thread and ``nthreads - 1`` pool threads: a thread that
    starts late (a worker woken after milliseconds on a busy host) or runs slower (a noisy
    neighbour) just takes fewer groups. Each group has its own accumulator and the groups are
    summed in order, so the result does not depend on which thread ran which group.
    """
    m, d = xa.shape
    itemsize = xa.dtype.itemsize
    kc = CHUNK_BYTES // itemsize
    nchunks = -(-d // kc)
    # Fewer groups when n is large, to bound the accumulators' memory (n^2 * 8 bytes each).
    ngroups = 1 if nthreads == 1 else min(
        nchunks, nthreads * max(1, min(_GROUPS_PER_THREAD, (32 << 20) // (8 * m * m * nthreads))))
    const = (kc, _ROW_PAD_BYTES // itemsize, _CACHE_LINE // itemsize)
    zero = xa.dtype.type(0)
    acc = np.zeros((ngroups, m, m))
    run_ranges(lambda g, lo, hi: _gram_range(xa, ca, acc[g], *const, lo, hi, zero),
               nchunks, ngroups, nthreads)
    return acc.sum(0) if ngroups > 1 else acc[0]


def _as_array(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def centered_gram(x: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """G[i, j] = <x_i - c, x_j - c> as a float64 (n, n) tensor.

    ``x`` is an (n, d) float32 or float64 CPU tensor (made contiguous if it is not); ``center``
    is a (d,) tensor, cast to ``x``'s dtype, or ``None`` for no centering. Products are summed
    in ``x``'s precision over chunks of about 1000 columns and the chunk sums in float64, so the
    error does not grow with d. ``x`` is not modified. Squared distances follow as
    ``G_ii + G_jj - 2 G_ij``; center at a point near the rows to avoid float32 cancellation
    (see the module docstring). A non-finite row only makes its own row and column non-finite.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError("centered_gram: x must be a 2-D tensor (n, d)")
    if kernels.use_torch(x, "centered_gram"):
        return torch_impl.centered_gram(x, center)
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"centered_gram: x must be float32 or float64, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError("centered_gram: x must be a CPU tensor")
    n, d = x.shape
    if n == 0 or d == 0:
        return torch.zeros((n, n), dtype=torch.float64)
    xa = _as_array(x)
    if center is None:
        ca = np.zeros(d, dtype=xa.dtype)  # calloc'd: reads come from the shared zero page
    else:
        if center.shape != (d,):
            raise ValueError(f"centered_gram: center must have shape ({d},), "
                             f"got {tuple(center.shape)}")
        ca = _as_array(center.to(device="cpu", dtype=x.dtype))
    if n in (1, 2, 5):  # not a sum of 4s and 3s: pad with rows equal to the center (zero rows)
        padded = np.empty((n + 1 if n == 5 else 3, d), dtype=xa.dtype)
        padded[:n] = xa
        padded[n:] = ca
        xa = padded
    serial = n * (n + 1) // 2 * d < _SERIAL_WORK
    total = _run(xa, ca, 1 if serial else max(1, torch.get_num_threads()))[:n, :n]
    return torch.from_numpy(np.triu(total) + np.triu(total, 1).T)


def warmup() -> None:
    """Compile (or load from numba's on-disk cache) the kernel for float32 and float64."""
    for dtype in (torch.float32, torch.float64):
        x = torch.ones((7, 3000), dtype=dtype)
        centered_gram(x, x[0])
