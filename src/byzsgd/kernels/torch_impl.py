"""Pure-torch implementations of the rules' kernels: any device, the compiled kernels' numbers.

Each function has the signature, the definition and the hostile-input behaviour of its compiled
twin (``byzsgd.aggregators._gram``, ``_orderstats``, ``_linf``, ``_rows``, ``_mix`` and
``byzsgd.attacks._moments``) and returns its result on its input's device:

* the centered Gram matrix subtracts the center in the input's precision and accumulates the
  products in float64 (the compiled kernel: float32 partial sums over 1024 columns, float64
  totals), so the float32 cancellation the centering avoids stays avoided; for float32 input,
  sums beyond float32's range read as +-inf, as the compiled float32 partial sums overflow, so a
  1e30 row is invalid in both; each entry involves two rows only, so a NaN/Inf row stays
  confined to its own row and column;
* the order statistics read NaN as +inf and are selections (the median and the sorted values
  are exact); the sums of the trimmed mean and the mean around median add the sorted values in
  the compiled kernel's order, in the input's precision, so they are exact too;
* the max-norm distances take the differences in float64 (exact);
* the columns are processed in chunks of bounded memory (``_CHUNK_BYTES`` per temporary), so a
  (51, 1e7) input on a GPU needs no (n, d) float64 copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Bytes of each column-chunk temporary (float64 (n, cols)), bounding the extra memory.
_CHUNK_BYTES = 1 << 28


def _cols(n: int, d: int, itemsize: int = 8) -> int:
    return max(1, min(d, _CHUNK_BYTES // max(1, n * itemsize)))


def centered_gram(x: Tensor, center: Tensor | None = None) -> Tensor:
    """G[i, j] = <x_i - c, x_j - c> as a float64 (n, n) tensor on ``x``'s device."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError("centered_gram: x must be a 2-D tensor (n, d)")
    if not x.is_floating_point():
        raise TypeError(f"centered_gram: x must be a floating tensor, got {x.dtype}")
    n, d = x.shape
    out = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    if n == 0 or d == 0:
        return out
    if center is not None:
        if center.shape != (d,):
            raise ValueError(f"centered_gram: center must have shape ({d},), "
                             f"got {tuple(center.shape)}")
        center = center.to(device=x.device, dtype=x.dtype)
    step = _cols(n, d)
    for k0 in range(0, d, step):
        y = x[:, k0:k0 + step]
        if center is not None:
            y = y - center[k0:k0 + step]
        y = y.to(torch.float64)
        out.addmm_(y, y.T)
    if x.dtype != torch.float64:
        big = torch.finfo(x.dtype).max
        inf = float("inf")
        out = torch.where(out > big, inf, torch.where(out < -big, -inf, out))
    # exactly symmetric, as the compiled kernel (it computes the upper triangle only)
    upper = out.triu()
    return upper + out.triu(1).T


def _nan_as_inf(x: Tensor) -> Tensor:
    return torch.where(torch.isnan(x), float("inf"), x)


def _sorted_chunks(x: Tensor, rows: Tensor | None):
    """(k0, sorted columns k0..) of ``x[rows]`` per column chunk, NaN read as +inf."""
    if rows is not None:
        x = x.index_select(0, rows.to(device=x.device, dtype=torch.long))
    m, d = x.shape
    step = _cols(m, d, 16)  # the values and sort's int64 indices
    for k0 in range(0, d, step):
        yield k0, _nan_as_inf(x[:, k0:k0 + step]).sort(dim=0).values


def _median_of_sorted(s: Tensor) -> Tensor:
    m = s.shape[0]
    return 0.5 * (s[(m - 1) // 2] + s[m // 2])


def _out(x: Tensor) -> Tensor:
    return torch.empty(x.shape[1], dtype=x.dtype, device=x.device)


def coordinate_median(x: Tensor, rows: Tensor | None = None) -> Tensor:
    """Per-coordinate median of ``x[rows]`` (mean of the two middle values when m is even)."""
    out = _out(x)
    for k0, s in _sorted_chunks(x, rows):
        out[k0:k0 + s.shape[1]] = _median_of_sorted(s)
    return out


def _sum_rows(s: Tensor) -> Tensor:
    """s[0] + s[1] + ... in this order (the compiled kernel's), in ``s``'s precision."""
    acc = torch.zeros_like(s[0])
    for r in range(s.shape[0]):
        acc += s[r]
    return acc


def coordinate_trimmed_mean(x: Tensor, b: int, rows: Tensor | None = None) -> Tensor:
    """Per coordinate, the mean of the values left after dropping the ``b`` smallest and
    ``b`` largest (requires m > 2b)."""
    out = _out(x)
    for k0, s in _sorted_chunks(x, rows):
        count = s.shape[0] - 2 * b
        out[k0:k0 + s.shape[1]] = _sum_rows(s[b:b + count]) / count
    return out


def coordinate_mean_around_median(x: Tensor, keep: int, rows: Tensor | None = None) -> Tensor:
    """Per coordinate, the mean of the ``keep`` values nearest to the median: the window of
    ``keep`` consecutive sorted values whose farther end is nearest the median (the first
    such window on ties; the first window when no score is finite)."""
    out = _out(x)
    for k0, s in _sorted_chunks(x, rows):
        m = s.shape[0]
        windows = m - keep + 1
        med = _median_of_sorted(s)
        left = med - s[:windows]
        right = s[keep - 1:keep - 1 + windows] - med
        score = torch.where(left > right, left, right)
        score = torch.where(torch.isnan(score), float("inf"), score)
        best = score.argmin(dim=0)  # the first minimum
        offsets = torch.arange(keep, device=s.device)[:, None]
        window = s.gather(0, best[None, :] + offsets)
        out[k0:k0 + s.shape[1]] = _sum_rows(window) / keep
    return out


def linf_distances(x: Tensor) -> Tensor:
    """The (n, n) float64 matrix of max-norm distances between the rows of the finite (n, d)
    tensor ``x`` (differences taken in float64), on ``x``'s device."""
    n, d = x.shape
    out = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    step = _cols(n * n, d)
    for k0 in range(0, d, step):
        c = x[:, k0:k0 + step].to(torch.float64)
        part = (c[:, None, :] - c[None, :, :]).abs_().amax(dim=2)
        torch.maximum(out, part, out=out)
    return out.triu(1) + out.triu(1).T


def sample_spread(sample: Tensor) -> Tensor:
    """For each row of ``sample`` (n, k), the lower median of its squared distances to all n
    rows, itself included; +inf for rows with a non-finite value and from every row to them
    (float64)."""
    s = sample.to(torch.float64)
    n = s.shape[0]
    ok = torch.isfinite(s).all(dim=1)
    diff = s[:, None, :] - s[None, :, :]
    dist = (diff * diff).sum(dim=2)
    both = ok[:, None] & ok[None, :]
    dist = torch.where(both, dist, float("inf"))
    dist.diagonal().copy_(torch.where(ok, 0.0, float("inf")))
    return dist.sort(dim=1).values[:, (n - 1) // 2]


def row_finite(row: Tensor) -> bool:
    """Whether the 1-D tensor ``row`` holds only finite values."""
    return bool(torch.isfinite(row).all())


def suffix_sources(sample: Tensor) -> Tensor:
    """For each of the last rows of ``sample``, from the end, the first earlier row equal to it
    (``==``: rows with NaN match nothing); ``source[i] = i`` from the last row that has none,
    down to row 0 (int64, on the CPU: it is read as a list)."""
    n = sample.shape[0]
    same = (sample[:, None, :] == sample[None, :, :]).all(dim=2).cpu()
    source = torch.arange(n)
    for i in range(n - 1, 0, -1):
        earlier = torch.nonzero(same[i, :i])
        if earlier.numel() == 0:
            break
        source[i] = int(earlier[0, 0])
    return source


def rows_equal(x: Tensor, lo: int, hi: int, src: int) -> bool:
    """Whether rows [lo, hi) of ``x`` all equal row ``src`` value by value (NaN equals
    nothing)."""
    return bool((x[lo:hi] == x[src]).all())


def mix_rows(x: Tensor, groups: list[list[int]]) -> Tensor:
    """``out[i] = mean of x[groups[i]]`` for each (non-empty) group, (len(groups), d): every
    term scaled before it is added, in the group's order (as the compiled kernel)."""
    out = torch.empty((len(groups), x.shape[1]), dtype=x.dtype, device=x.device)
    for i, g in enumerate(groups):
        w = torch.tensor(1.0 / len(g), dtype=torch.float64).to(x.dtype).item()
        acc = x[g[0]] * w
        for r in g[1:]:
            acc += x[r] * w
        out[i] = acc
    return out


def mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate mean and sample standard deviation (Bessel-corrected; 0 for one row) of
    the rows of ``x`` (m, d), accumulated in float64 and returned in ``x``'s float dtype."""
    x = x.detach()
    m = x.shape[0]
    if m == 0:
        raise ValueError("mean_std: needs at least one row")
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    x64 = x.to(torch.float64)
    mu = x64.mean(dim=0)
    sigma = ((x64 - mu) ** 2).sum(dim=0).div_(m - 1).sqrt_() if m > 1 else torch.zeros_like(mu)
    return mu.to(dtype), sigma.to(dtype)
