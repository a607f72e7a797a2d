"""Row norms in float64, read in column chunks: what the clipping rules need.

``|x_i - c|`` for every row of an (n, d) float32 input, accumulated in float64 so that a
Byzantine row of float32 max (whose square overflows float32) still gets a finite norm, and
without a float64 copy of the whole input (chunks of ``CHUNK`` columns). A row holding a NaN
gets a NaN norm, a row holding an infinity +inf.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Columns per chunk: (51 rows x 32768 columns) in float64 is 13 MiB.
CHUNK = 32768


def row_norms(x: Tensor, center: Tensor | None = None) -> Tensor:
    """Euclidean norms (float64, (n,)) of the rows of ``x - center`` (``center`` (d,) or
    None for 0)."""
    n, d = x.shape
    total = torch.zeros(n, dtype=torch.float64)
    for a in range(0, d, CHUNK):
        part = x[:, a:a + CHUNK].to(torch.float64, copy=True)  # never a view of x
        if center is not None:
            part -= center[a:a + CHUNK].double()
        total += part.square_().sum(dim=1)
    return total.sqrt_()


def scale_rows(x: Tensor, rows: Tensor, factors: Tensor) -> None:
    """``x[rows[k]] *= factors[k]`` in place, the product taken in float64 (a float32 max row
    times a factor below float32's normal range keeps its digits). A factor of 0 zeroes a
    row whatever it held (NaN or infinite rows clipped to nothing)."""
    for r, s in zip(rows.tolist(), factors.tolist(), strict=True):
        if s == 0.0:
            x[r].zero_()
        else:
            for a in range(0, x.shape[1], CHUNK):
                part = x[r, a:a + CHUNK]
                if part.dtype == torch.float64:
                    part.mul_(s)
                else:
                    part.copy_(part.double() * s)
