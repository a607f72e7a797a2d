"""Pairwise distances between worker vectors, computed once per aggregation and shared.

For the Euclidean norm everything derives from one Gram matrix G = (X - c)(X - c)^T
(float64, n x n): squared distances ``G_ii + G_jj - 2 G_ij``, Krum scores, the medoid, and
Weiszfeld's iterations for the geometric median all work on G, so the (n, d) input is read
once, however many times a rule (or Bulyan's loop) needs distances.

Centering: in float32, ``|a|^2 + |b|^2 - 2<a, b>`` loses every digit when the rows share a
large common component (gradients late in training; a constant offset). Distances do not
change under translation, so we subtract a *pivot* row first, chosen robustly near the bulk of
the rows (the row with the least median distance to the others, measured on a strided sample of
coordinates) so a Byzantine outlier is never the origin.

Hostile rows: a row with a NaN/Inf value, or whose squared norm overflows, is *invalid*: it is
at distance +inf from every row (and from itself), so it never wins a nearest-neighbour
contest, while it still counts as a worker in n. (In float32 the Gram sums overflow once a
row's squared distance to the pivot passes ~3.4e38, e.g. values of 1e20; the same row given in
float64 is valid and merely far away.) Finite rows of any smaller magnitude keep the honest
rows' distances exact: the pivot is an honest row, so a huge row only enlarges its own Gram
row and column.

Ties: a rule that ranks rows (Krum, Multi-Krum, the Medoid, Bulyan's iterations) must not let
the rows' *order* decide between rows of equal score, or the output changes when the workers
are numbered differently (and the simulator numbers the Byzantine workers last).
:func:`rank_by_sum` sums each row's costs in ascending order (a function of the multiset of
costs, not of the column order) and settles ties that straddle the cut a rule takes by a
further geometric key and then by the rows' values (:func:`byzsgd.aggregators._rows.
compare_rows`): both are functions of the rows, not of their positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cmp_to_key

import numpy as np
import torch
from torch import Tensor

from ._gram import centered_gram
from ._linf import linf_distances
from ._orderstats import coordinate_median
from ._rows import compare_rows, row_finite, rows_equal, sample_spread, suffix_sources

#: Coordinates sampled to choose the pivot row (it only has to be near the bulk of the rows).
PIVOT_SAMPLE = 512


@dataclass(frozen=True)
class Geometry:
    """Pairwise geometry of the rows of one (n, d) input.

    ``gram`` is the centered Gram matrix (float64, ``None`` unless ``p == 2``), ``sqdist`` the
    squared ``p``-norm distances (float64, +inf for invalid rows, 0 on the diagonal of valid
    rows), ``valid`` marks rows with finite values and finite squared norm. ``rows`` is the
    input itself when the geometry was computed from it (not copied): the rules read it only
    to break exact ties by value; ``None`` for a geometry known without the rows (the leeway
    attacks' model), whose ties then go to the lower index.
    """

    sqdist: Tensor
    valid: Tensor
    gram: Tensor | None
    p: float
    rows: Tensor | None = None

    @property
    def dist(self) -> Tensor:
        """Distances (not squared). (numpy: torch sends a float64 sqrt of n^2 values to a
        threaded kernel, 30 ms instead of 10 us on a loaded host.)"""
        return torch.from_numpy(np.sqrt(self.sqdist.numpy()))

    def combine(self, x: Tensor, weights: Tensor) -> Tensor:
        """``sum_i weights_i x_i`` over the rows of ``x`` this geometry describes: one
        matrix-vector pass when every row is valid; otherwise only the rows with non-zero
        weight are read (0 * NaN would poison a plain product). A single row of weight 1 is
        returned exactly (a copy)."""
        rows = torch.nonzero(weights, as_tuple=True)[0]
        if rows.numel() == 1 and float(weights[rows[0]]) == 1.0:
            return x[int(rows[0])].clone()
        w = weights.to(device=x.device, dtype=x.dtype)
        if bool(self.valid.all()):
            return torch.mv(x.T, w)
        return torch.mv(x.index_select(0, rows.to(x.device)).T, w[rows.to(x.device)])

    def mean(self, x: Tensor, rows: Tensor) -> Tensor:
        """Mean of the rows ``x[rows]``."""
        weights = torch.zeros(x.shape[0], dtype=torch.float64)
        weights[rows] = 1.0 / rows.numel()
        return self.combine(x, weights)


def _nan_to_inf(t: Tensor) -> Tensor:
    inf = float("inf")
    return torch.nan_to_num(t, nan=inf, posinf=inf, neginf=-inf)


def coordinate_sample(x: Tensor) -> Tensor:
    """The rows of ``x`` on ``PIVOT_SAMPLE`` evenly spaced coordinates, in float64."""
    return x[:, :: max(1, x.shape[1] // PIVOT_SAMPLE)].double()


def pivot_row(x: Tensor, sample: Tensor | None = None) -> int | None:
    """Index of a finite row near the bulk of the rows (None when every row is non-finite):
    the row with the smallest median distance to the others on ``PIVOT_SAMPLE`` evenly
    spaced coordinates (``sample``, :func:`coordinate_sample` of x when None), skipping rows
    that are non-finite there or anywhere."""
    sample = coordinate_sample(x) if sample is None else sample
    spread = sample_spread(sample)
    for i in torch.argsort(spread, stable=True).tolist():
        if row_finite(x[i]):
            return i
    return None


def gram_distances(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distances G_ii + G_jj - 2 G_ij of a Gram matrix (NaN read as +inf, rounding
    below 0 clamped) and the rows whose squared norm is finite (valid)."""
    diag = gram.diagonal()
    sq = _nan_to_inf(diag[:, None] + diag[None, :] - 2.0 * gram).clamp_(min=0.0)
    return sq, torch.isfinite(diag)


def repeated_rows(x: Tensor, sample: Tensor) -> Tensor | None:
    """Where the last rows of ``x`` repeat earlier ones: ``source`` (n,) with ``source[i] = i``
    for the first m rows and, for i >= m, the row < i that row i equals on every coordinate
    (the first such row, which is < m); None when the last row repeats no other.

    Attacks that send one vector from all f Byzantine workers (A Little Is Enough, inner
    product manipulation, the leeway attacks...) make f identical rows, and the simulator
    puts them last. Their Gram rows are copies of one, so the Gram matrix is computed on the
    first m rows only (for n = 51 and f = 12: 40 rows, 38% fewer products). Candidates are
    rows equal on the pivot's coordinate ``sample``; every candidate is then compared with
    its source on all d coordinates, so a row that differs anywhere is not taken for a copy.
    """
    source = suffix_sources(sample)
    src = source.tolist()
    n = len(src)
    m = next((i + 1 for i in range(n - 1, -1, -1) if src[i] == i), 0)
    if m == n:
        return None
    # Verify on every coordinate, one comparison per run of rows with the same source.
    lo = m
    while lo < n:
        hi = lo
        while hi < n and src[hi] == src[lo]:
            hi += 1
        if not rows_equal(x, lo, hi, src[lo]):
            return None
        lo = hi
    return source


def _centered(x: Tensor, center: Tensor | None,
              source: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gram matrix centred at ``center``, squared distances and valid rows; with ``source``
    (:func:`repeated_rows`) the Gram matrix of the distinct first rows, expanded."""
    if source is None:
        gram = centered_gram(x, center).cpu()
    else:
        m = int((source == torch.arange(source.numel())).sum())
        gram = centered_gram(x[:m], center).cpu()[source][:, source]
    return gram, *gram_distances(gram)


def _pivot_failed(gram: Tensor, sq: Tensor, valid: Tensor) -> bool:
    """Whether the pivot row turned out far from the bulk of the rows.

    The pivot is chosen on a sample of coordinates, so a row that is central there but far
    away on an unsampled coordinate (El Mhamdi et al.'s attack moves one coordinate by gamma)
    can be chosen. Then either the other rows' squared distances to it overflow (most rows
    come out invalid), or they exceed the distances within the bulk by orders of magnitude and
    those are lost to float32 cancellation (they come out as 0 or noise). Detected as: at most
    half the rows valid, or a median squared distance to the pivot (the Gram diagonal) above
    4x the median pairwise one (about 1x for a pivot in the bulk).
    """
    n = sq.shape[0]
    if n < 3:
        return False
    rows = torch.nonzero(valid).flatten()
    if 2 * rows.numel() <= n:
        return True
    pairs = sq[rows][:, rows][tuple(torch.triu_indices(rows.numel(), rows.numel(), 1))]
    return float(gram.diagonal()[rows].median()) > 4.0 * float(pairs.median())


def robust_center(x: Tensor) -> Tensor:
    """The coordinate-wise median of the rows, 0 where it is not finite (half or more of the
    rows non-finite there): within the bulk of the rows whatever fewer than half do."""
    center = coordinate_median(x)
    return torch.where(torch.isfinite(center), center, center.new_zeros(()))


def geometry(x: Tensor, p: float = 2.0) -> Geometry:
    """Pairwise squared ``p``-norm distances of the rows of ``x`` (n, d).

    The (n, n) results come back to the CPU, whatever ``x``'s device (n^2 values, one
    synchronization: the selections read them value by value); ``x`` itself never moves.

    ``p = 2`` uses the centered Gram matrix (fast); other ``p`` (``float('inf')`` for the
    max-norm of El Mhamdi et al.'s l_inf setting, a compiled kernel) use pairwise distances in
    float64, O(n^2 d).
    """
    if not (p >= 1):
        raise ValueError(f"distance norm needs p >= 1 (or inf), got p={p}")
    if p == 2:
        sample = coordinate_sample(x)
        pivot = pivot_row(x, sample)
        source = repeated_rows(x, sample)
        gram, sq, valid = _centered(x, None if pivot is None else x[pivot], source)
        if pivot is not None and _pivot_failed(gram, sq, valid):
            gram, sq, valid = _centered(x, robust_center(x), source)
    else:
        gram = None
        valid = torch.isfinite(x).all(dim=1)
        clean = torch.where(valid[:, None], x, x.new_zeros(())).double()
        sq = (linf_distances(clean) if p == float("inf")
              else torch.cdist(clean, clean, p=p)).square_().cpu()
        valid = valid.cpu()
        valid &= torch.isfinite(sq.diagonal()) & torch.isfinite(sq).all(dim=1)
    return finish_geometry(sq, valid, gram, p, rows=x)


def finish_geometry(sq: Tensor, valid: Tensor, gram: Tensor | None, p: float,
                    rows: Tensor | None = None) -> Geometry:
    """The :class:`Geometry` of squared distances ``sq`` (float64, modified in place): rows
    not ``valid`` at +inf from everything, 0 on the diagonal of valid rows."""
    if bool(valid.all()):
        sq.fill_diagonal_(0.0)
    else:
        inf = float("inf")
        sq[~valid] = inf
        sq[:, ~valid] = inf
        idx = torch.arange(sq.shape[0])
        sq[idx[valid], idx[valid]] = 0.0
    return Geometry(sqdist=sq, valid=valid, gram=gram, p=p, rows=rows)


def rank_by_sum(costs: Tensor, *, cut: int = 0, profile: Tensor | None = None,
                rows: Tensor | None = None, index: Tensor | None = None,
                presorted: bool = False) -> Tensor:
    """Order rows by the sum of their (n, k) ``costs`` rows, lowest first.

    Infinite costs make plain sums useless (every row facing a Byzantine row at overflow
    distance would tie at +inf), so rows are ranked lexicographically: fewest infinite terms
    first, then the sum of the finite terms. Each row's terms are summed in ascending order
    (``presorted``: the caller's rows already are), so a sum depends on the row's multiset of
    costs only, not on where the columns are.

    A rule that keeps the first ``cut`` rows of the order must not let the row numbering pick
    among rows of equal key on either side of the cut. Those rows are ordered, among
    themselves, by their ``profile`` rows compared lexicographically (for Krum: the squared
    distances to the neighbours beyond the k counted, nearest first), then by their values
    (``rows[index[i]]``, :func:`~byzsgd.aggregators._rows.compare_rows`), then by index,
    which can only matter between rows of equal values. Without ``cut`` (0), or without
    ``rows``, the remaining ties go to the lower index.
    """
    # numpy: on these (n, k) arrays (n ~ 50, called n - 2f times by Bulyan) each torch call's
    # fixed cost would be most of the time.
    c = costs.detach().numpy()
    if not presorted:
        c = np.sort(c, axis=1)
    finite = np.isfinite(c)
    n_inf = c.shape[1] - finite.sum(axis=1)
    finite_sum = np.where(finite, c, 0.0).sum(axis=1)
    order = np.lexsort((finite_sum, n_inf))  # stable: n_inf first, then the sum, then index
    n = order.size
    if 0 < cut < n:
        last, after = order[cut - 1], order[cut]
        if n_inf[last] == n_inf[after] and finite_sum[last] == finite_sum[after]:
            tied = (n_inf == n_inf[last]) & (finite_sum == finite_sum[last])
            order = _settle(order, tied, profile, rows, index)
    return torch.from_numpy(order)


def _settle(order: np.ndarray, tied: np.ndarray, profile: Tensor | None, rows: Tensor | None,
            index: Tensor | None) -> np.ndarray:
    """``order`` with its run of ``tied`` rows (contiguous in it) reordered by ``profile``,
    then value, then index."""
    group = np.flatnonzero(tied[order])
    lo, hi = int(group[0]), int(group[-1]) + 1
    members = order[lo:hi].tolist()
    members.sort(key=cmp_to_key(_tie_comparator(profile, rows, index)))
    order = order.copy()
    order[lo:hi] = members
    return order


def _tie_comparator(profile: Tensor | None, rows: Tensor | None,
                    index: Tensor | None) -> Callable[[int, int], int]:
    def compare(i: int, j: int) -> int:
        if profile is not None and profile.shape[1]:
            differ = (profile[i] != profile[j]).nonzero()
            if differ.numel():
                c = int(differ[0])
                return -1 if profile[i, c] < profile[j, c] else 1
        if rows is not None:
            a, b = (i, j) if index is None else (int(index[i]), int(index[j]))
            by_value = compare_rows(rows[a], rows[b])
            if by_value:
                return by_value
        return -1 if i < j else (1 if i > j else 0)

    return compare


def argmin_settled(values: Tensor, rows: Tensor | None = None, index: Tensor | None = None,
                   *, rtol: float = 0.0) -> int:
    """Position of the smallest of ``values`` (1-D, NaN read as +inf); among the values within
    ``rtol`` (relative) of the smallest, the one whose row ``rows[index[i]]`` comes first by
    value (:func:`~byzsgd.aggregators._rows.compare_rows`), so the row numbering does not
    choose. ``rtol`` makes ties of values known only approximately (distances to an iterate)
    ties, instead of leaving them to the rounding."""
    values = _nan_to_inf(values)
    best = float(values.min())
    tied = (values <= best + rtol * abs(best)).nonzero().flatten().tolist()
    if len(tied) > 1:
        tied.sort(key=cmp_to_key(_tie_comparator(None, rows, index)))
    return tied[0]
