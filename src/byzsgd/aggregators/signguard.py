"""SignGuard (Xu, Huang, Zhang, Wang, Li, "SignGuard: Byzantine-robust Federated Learning
through Collaborative Malicious Gradient Filtering", ICDCS 2022, Algorithm 1).

Two filters run side by side on the received vectors, and the vectors both keep are clipped
and averaged:

1. norm filter: with M the median of the norms |x_i|, keep
   S1 = {i : L M <= |x_i| <= R M} (the paper's L = 0.1, R = 3.0);
2. sign filter: on a random window of the coordinates (a fraction of d, the paper's 10%),
   describe each vector by the proportions of its positive, zero and negative coordinates,
   cluster these 3-d features with mean shift, keep S2 = the largest cluster;
3. output ``1/|S| sum_{i in S} x_i min(1, M / |x_i|)`` with S = S1 n S2.

Deterministic clustering. The paper (and the authors' code) runs scikit-learn's MeanShift
with a bandwidth estimated on a random sub-sample and bin seeding; here mean shift is written
out so that its result depends on the set of features only, not on the row order or a random
state (see :func:`mean_shift`). The features are the integer counts (proportions times the
number of sampled coordinates, the same clusters), so every window mean is exact.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from torch import Tensor

from byzsgd.constraints import Interval

from ._base import Aggregation, as_gradients, check_f, require
from ._norms import row_norms
from ._registry import register

#: Mean-shift iterations per seed (scikit-learn's default max_iter).
MAX_ITER = 300
#: The nearest-neighbour quantile that sets the bandwidth (the authors' code: 0.5).
QUANTILE = 0.5


def check_signguard(n: int, f: int, lower: float = 0.1, upper: float = 3.0,
                    fraction: float = 0.1, seed: int = 0) -> None:
    check_f("signguard", n, f)
    require("signguard", 2 * f < n, "f < n/2 (the median norm must be an honest one)", n, f)
    if not (isinstance(lower, Real) and 0 < lower <= 1):
        raise ValueError(f"signguard needs 0 < lower <= 1, got lower={lower}")
    if not (isinstance(upper, Real) and 1 <= upper < math.inf):
        raise ValueError(f"signguard needs 1 <= upper < inf, got upper={upper}")
    if not (isinstance(fraction, Real) and 0 < fraction <= 1):
        raise ValueError(f"signguard needs 0 < fraction <= 1, got fraction={fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"signguard: seed must be an int, got {type(seed).__name__}")


def bandwidth(points: np.ndarray, quantile: float = QUANTILE) -> float:
    """scikit-learn's ``estimate_bandwidth`` on all points: the mean over the points of the
    distance to their k-th nearest (the point itself counting as the first),
    k = max(1, floor(n quantile)); summed exactly (``math.fsum``), so the row order does not
    change it."""
    n = points.shape[0]
    k = max(1, int(n * quantile))
    dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
    return math.fsum(np.sort(dist, axis=1)[:, k - 1].tolist()) / n


def mean_shift(points: np.ndarray, h: float) -> np.ndarray:
    """Flat-kernel mean shift (scikit-learn's MeanShift with ``cluster_all=False``), made
    independent of the row order: every point seeds a window that moves to the mean of the
    points within distance h until it moves by at most 1e-3 h; the converged centers, ordered
    by how many points they hold (most first) then by value, are kept unless within h of a
    center kept before; each point joins its nearest kept center when within h (else -1).
    Returns the labels, 0 the largest cluster (ties by the center order)."""
    n = points.shape[0]
    found: dict[tuple[float, ...], int] = {}
    for i in range(n):
        c = points[i]
        for _ in range(MAX_ITER):
            within = np.sqrt(((points - c) ** 2).sum(axis=1)) <= h
            new = points[within].sum(axis=0) / within.sum()  # integer sums: exact
            moved = float(np.sqrt(((new - c) ** 2).sum()))
            c = new
            if moved <= 1e-3 * h:
                break
        within = np.sqrt(((points - c) ** 2).sum(axis=1)) <= h
        found[tuple(c.tolist())] = int(within.sum())
    kept: list[np.ndarray] = []
    for center, _ in sorted(found.items(), key=lambda item: (-item[1], item[0])):
        cv = np.array(center)
        if all(float(np.sqrt(((cv - k) ** 2).sum())) > h for k in kept):
            kept.append(cv)
    centers = np.stack(kept)
    dist = np.sqrt(((points[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2))
    labels = dist.argmin(axis=1)  # ties to the earlier center
    labels[dist[np.arange(n), labels] > h] = -1
    sizes = np.bincount(labels[labels >= 0], minlength=len(kept))
    order = np.argsort(-sizes, kind="stable")  # largest first, ties by center order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return np.where(labels >= 0, rank[np.maximum(labels, 0)], -1)


def window(d: int, fraction: float, generator: torch.Generator) -> slice:
    """The coordinates the sign statistics read: ceil(fraction d) consecutive ones from a
    start drawn uniformly from ``generator`` (the authors' code; the paper says "a random
    subset"). A window costs a tenth of a read of x at the paper's 10%, where a random
    subset of 1e5 out of 1e6 coordinates costs ~10 reads (a permutation and a gather)."""
    b = min(d, max(1, math.ceil(fraction * d)))
    start = int(torch.randint(0, d - b + 1, (1,), generator=generator)) if b < d else 0
    return slice(start, start + b)


def sign_counts(x: Tensor, coords: slice) -> np.ndarray:
    """(n, 3) float64: how many of each row's coordinates ``coords`` are > 0, == 0, < 0
    (a NaN counts in none)."""
    sub = x[:, coords]
    counts = torch.stack([(sub > 0).sum(dim=1), (sub == 0).sum(dim=1), (sub < 0).sum(dim=1)],
                         dim=1)
    return counts.cpu().numpy().astype(np.float64)


@register("signguard",
          summary="norm filter and sign-statistics clustering, then the clipped mean "
                  "(Xu et al. 2022)",
          selects_rows=True, requires=check_signguard,
          constraints={"lower": [Interval(Real, 0, 1, closed="right")],
                       "upper": [Interval(Real, 1, None, closed="left")],
                       "fraction": [Interval(Real, 0, 1, closed="right")],
                       "seed": [Interval(Integral, 0, 2**63 - 1, closed="both")],
                       "generator": [torch.Generator, None]})
def signguard(gradients: Tensor, f: int, *, lower: float = 0.1, upper: float = 3.0,
              fraction: float = 0.1, seed: int = 0,
              generator: torch.Generator | None = None) -> Aggregation:
    """SignGuard (Xu et al., ICDCS 2022, Algorithm 1): the mean of the vectors kept by both
    the norm filter ``S1 = {i : lower M <= |x_i| <= upper M}`` (M the median norm) and the
    sign filter S2 (the largest mean-shift cluster of the rows' counts of positive, zero and
    negative values on a random window of ``ceil(fraction d)`` consecutive coordinates,
    :func:`window`), each clipped to
    norm M: ``1/|S| sum_{i in S} x_i min(1, M / |x_i|)``. Defaults are the paper's
    (lower 0.1, upper 3.0, 10% of the coordinates). f is not used by the filters; f < n/2
    makes M an honest norm.

    The coordinates are drawn from ``generator`` (the bound rule passes one seeded per round),
    else from a generator seeded with ``seed``; the clustering is deterministic
    (:func:`mean_shift`). M is the lower median (the ((n - 1) // 2)-th smallest norm). When
    S1 n S2 is empty (the paper does not say), S = S1, which holds the median row. A row
    with a non-finite value has a NaN or infinite norm and is never in S1. ``selected``
    holds S.
    """
    x = as_gradients(gradients, "signguard")
    n, d = x.shape
    check_signguard(n, f, lower, upper, fraction, seed)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    norms = row_norms(x)
    key = torch.nan_to_num(norms, nan=math.inf)
    med = float(key.sort().values[(n - 1) // 2])
    s1 = torch.isfinite(norms) & (norms >= lower * med) & (norms <= upper * med)
    points = sign_counts(x, window(d, fraction, g))
    s2 = torch.from_numpy(mean_shift(points, bandwidth(points)) == 0)
    chosen = s1 & s2
    if not bool(chosen.any()):
        chosen = s1
    rows = torch.nonzero(chosen, as_tuple=True)[0]
    scale = torch.where(norms[rows] > med, med / norms[rows], torch.ones_like(norms[rows]))
    weights = torch.zeros(n, dtype=torch.float64)
    weights[rows] = scale / rows.numel()
    w = weights.to(device=x.device, dtype=x.dtype)
    if bool(torch.isfinite(norms).all()):  # one pass over x, zero weight on the rows left out
        return Aggregation(torch.mv(x.T, w), rows)
    dev = rows.to(x.device)
    return Aggregation(torch.mv(x.index_select(0, dev).T, w[dev]), rows)
