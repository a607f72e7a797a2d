"""Bulyan(A) (El Mhamdi et al., Hidden Vulnerability, Section 4; Algorithm 2 of A Little Is
Enough)."""

from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor

from byzsgd.constraints import Interval, Options

from ._base import P_NORM, Aggregation, as_gradients, check_f, require
from ._orderstats import coordinate_mean_around_median
from ._registry import register
from .brute import check_brute, smallest_diameter_subset
from .distances import Geometry, argmin_settled, geometry
from .geomed import WEISZFELD, medoid_order, squared_distances_to_combination, weiszfeld
from .krum import krum_scores_order

BASES = ("krum", "medoid", "geomed", "brute")
#: Squared distances to A's output within this relative gap of the least are a tie.
TIE_RTOL = 1e-6


def check_bulyan(n: int, f: int, base: str = "krum", p: float = 2.0,
                 max_subsets: int = 1_000_000) -> None:
    """Bulyan's precondition and what it implies for its base (``base`` itself is a
    declared constraint)."""
    check_f("bulyan", n, f)
    require("bulyan", n >= 4 * f + 3, "n >= 4f + 3", n, f)
    if base == "geomed" and p != 2:
        raise ValueError(f"bulyan: base 'geomed' is Euclidean, it needs p=2, got p={p}")
    if base == "brute":
        check_brute(n, f, max_subsets)


def _closest_to_combination(x: Tensor | None, geo: Geometry, remaining: Tensor,
                            alpha: Tensor) -> int:
    """Position in ``remaining`` of the row closest to ``sum_i alpha_i x_i`` (from the Gram
    matrix when the geometry has one, else from the rows ``x``); invalid rows are at +inf.

    Rows at the same distance (within ``TIE_RTOL``: the combination, a Weiszfeld iterate, is
    known to about 1e-6 of the rows' spread) are told apart by value, not by index: the
    geometric median and the mean of two rows are equally far from both, and which one
    rounding put first decided before."""
    if geo.gram is not None:
        sq = squared_distances_to_combination(geo.gram, alpha)[remaining]
    else:
        if x is None:
            raise ValueError(f"bulyan: locating a combination in the l_{geo.p} norm needs the "
                             f"input rows, not only their distances")
        point = geo.combine(x, alpha)[None]
        sq = torch.cdist(point.double(), x[remaining.to(x.device)].double(), p=geo.p)[0].cpu()
    sq = torch.where(geo.valid[remaining], sq, torch.full_like(sq, float("inf")))
    return argmin_settled(sq, x, remaining, rtol=TIE_RTOL)


def _pick(base: str, x: Tensor | None, geo: Geometry, remaining: Tensor, f: int, *,
          tol: float, max_iter: int) -> int:
    """One step of Bulyan's selection: run A on the remaining rows and return the position
    (in ``remaining``) of the vector A chose, or of the vector closest to A's output."""
    sub = geo.sqdist[remaining][:, remaining]
    if base == "krum":
        return int(krum_scores_order(sub, f, cut=1, rows=x, index=remaining)[0])
    if base == "medoid":
        return int(medoid_order(geo, remaining, rows=x)[0])
    alpha = torch.zeros(geo.sqdist.shape[0], dtype=torch.float64)
    if base == "geomed":
        assert geo.gram is not None
        members = remaining[geo.valid[remaining]]
        if members.numel() == 0:
            return 0
        alpha = weiszfeld(geo.gram, members, tol=tol, max_iter=max_iter)
    else:  # brute: its output is the mean of the smallest-diameter subset
        subset = remaining[smallest_diameter_subset(sub, f, rows=x, index=remaining)]
        alpha[subset] = 1.0 / subset.numel()
    return _closest_to_combination(x, geo, remaining, alpha)


def bulyan_selection(geo: Geometry, f: int, *, base: str = "krum", tol: float = 1e-6,
                     max_iter: int = 200, x: Tensor | None = None, **_: object) -> Tensor:
    """Bulyan's selection set (sorted): theta = n - 2f iterations of the rule ``base`` on the
    rows not yet selected. From the geometry alone, except for bases ``geomed`` and ``brute``
    in a norm without a Gram matrix (p != 2), which need the rows ``x`` (``geo.rows`` when not
    given).

    No step lets the row numbering decide: ties in A's choice go to the further geometric
    key, then to the rows' values (see :func:`~.krum.krum_scores_order`); rows with NaN or
    infinite values (the distributed runtime's absent workers) are never picked while a valid
    row remains."""
    x = geo.rows if x is None else x
    n = geo.sqdist.shape[0]
    remaining = torch.arange(n)
    selection: list[int] = []
    for _ in range(n - 2 * f):
        j = _pick(base, x, geo, remaining, f, tol=tol, max_iter=max_iter)
        selection.append(int(remaining[j]))
        remaining = torch.cat([remaining[:j], remaining[j + 1:]])
    return torch.sort(torch.tensor(selection, dtype=torch.long)).values


@register("bulyan",
          summary="Bulyan(A): iterate A to select n - 2f, then trimmed mean around median",
          selects_rows=True, selection=bulyan_selection,
          # base's own parameters are validated against base's constraints
          constraints={"base": [Options(BASES)], "p": P_NORM, **WEISZFELD,
                       "max_subsets": [Interval(Integral, 1, None, closed="left")]},
          requires=check_bulyan)
def bulyan_select(gradients: Tensor, f: int, *, base: str = "krum", p: float = 2.0,
                  tol: float = 1e-6, max_iter: int = 200,
                  max_subsets: int = 1_000_000) -> Aggregation:
    """Bulyan(A): needs n >= 4f + 3.

    1. Selection: iterate the rule A (``base``: krum, medoid, geomed or brute) theta = n - 2f
       times, each time on the vectors not yet selected, moving the vector A picks (for
       geomed and brute, the one closest to A's output) into the selection set. Distances
       are computed once and reused by every iteration (Hidden Vulnerability, Proposition 1).
       Krum's neighbour count n' - f - 2 follows the shrinking set size n'.
    2. Aggregation: per coordinate, the mean of the beta = theta - 2f selected values
       closest to the median of the theta selected values (the second trimmed-mean variant of
       A Little Is Enough, 2.3; for even theta the median is the mean of the two middle values).

    ``selected`` reports the selection set.
    """
    x = as_gradients(gradients, "bulyan")
    n = x.shape[0]
    check_bulyan(n, f, base, p, max_subsets)
    chosen = bulyan_selection(geometry(x, p), f, base=base, tol=tol, max_iter=max_iter, x=x)
    theta = n - 2 * f
    value = coordinate_mean_around_median(x, theta - 2 * f, rows=chosen)
    return Aggregation(value, chosen)
