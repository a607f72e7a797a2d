"""Row norms and row scaling for the clipping rules, safe on hostile rows.

:func:`row_norms` -- ``|x_i - c|`` for every row of an (n, d) input in one vectorized pass;
a row whose norm overflows float32 (a Byzantine row of float32 max, whose square does) is
recomputed in float64, in column chunks, so it gets a finite norm. A row holding a NaN gets a
NaN norm, a row holding an infinity +inf.

:func:`scaled_rows` -- ``x_i * s_i`` in one pass, except for the rows whose factor is below
float32's normal range (a float32-max row clipped to a small norm) or 0 (a non-finite row
clipped to nothing), done row by row in float64 / zeroed; into a new tensor or into ``out=``
(a warm buffer: no fresh pages).

:func:`plain_factors` -- whether factors may be applied lazily, as ``x_i * s_i`` in ``x``'s
dtype by whatever reads the rows next (no factor 0, none below :data:`TINY`): the clipping
rules' factors then stand for their output without it being written (``chain.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from byzsgd.kernels import memory

#: Columns per chunk of the float64 fallback: one row of 65536 doubles is 512 KiB.
CHUNK = 65536
#: Factors below this are applied in float64 (float32's smallest normal is 1.2e-38).
TINY = 1e-30


def _row_norm64(row: Tensor, center: Tensor | None) -> float:
    total = 0.0
    for a in range(0, row.shape[0], CHUNK):
        part = row[a:a + CHUNK].to(torch.float64, copy=True)  # never a view of the input
        if center is not None:
            part -= center[a:a + CHUNK].double()
        total += float(part.square_().sum())
    return math.sqrt(total)


def row_norms(x: Tensor, center: Tensor | None = None) -> Tensor:
    """Euclidean norms (float64, (n,)) of the rows of ``x - center`` (``center`` (d,) or
    None for 0)."""
    if center is None:
        norms = torch.linalg.vector_norm(x, dim=1).double()
    else:
        norms = torch.cdist(x, center[None].to(x.dtype),
                            compute_mode="donot_use_mm_for_euclid_dist")[:, 0].double()
    for i in torch.nonzero(~torch.isfinite(norms), as_tuple=True)[0].tolist():
        norms[i] = _row_norm64(x[i], center)  # overflow in float32, or NaN / inf (stays)
    return norms


def plain_factors(factors: Tensor) -> bool:
    """Whether every factor is 1 or at least :data:`TINY`: then ``x_i * factors_i`` in ``x``'s
    dtype is exactly what :func:`scaled_rows` writes, and a reader may apply the factors as it
    reads the rows. False when a row is clipped to 0 (0 * inf is NaN: it must be zeroed) or
    by a factor float32 cannot hold (applied in float64)."""
    return bool(_in_range(factors).all())


def _in_range(factors: Tensor) -> Tensor:
    """The factors that ``x``'s dtype applies exactly: 1, or at least :data:`TINY`."""
    return (factors >= TINY) | (factors == 1.0)


def scaled_rows(x: Tensor, factors: Tensor, out: Tensor | None = None) -> Tensor:
    """``x_i * factors_i`` (factors float64, (n,)) in a new tensor, or written into ``out``
    (x's shape, dtype and device) and returned; a factor of 0 zeroes its row whatever it held
    (NaN or infinite rows clipped to nothing)."""
    if out is None:
        out = memory.empty(tuple(x.shape), x.dtype, x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be a {x.dtype} tensor of shape {tuple(x.shape)} on "
                         f"{x.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    safe = _in_range(factors)
    f32 = torch.where(safe, factors, torch.ones_like(factors)).to(device=x.device, dtype=x.dtype)
    torch.mul(x, f32[:, None], out=out)
    for r in torch.nonzero(~safe, as_tuple=True)[0].tolist():
        s = float(factors[r])
        if s == 0.0:
            out[r].zero_()
        else:
            for a in range(0, x.shape[1], CHUNK):
                out[r, a:a + CHUNK] = x[r, a:a + CHUNK].double() * s
    return out
