"""Krum and Multi-Krum (Blanchard et al., 2017)."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from torch import Tensor

from byzsgd.constraints import Interval

from ._base import P_NORM, Aggregation, as_gradients, check_f, require
from ._registry import register
from .distances import Geometry, geometry, rank_by_sum


def krum_scores_order(sqdist: Tensor, f: int, *, cut: int = 0, rows: Tensor | None = None,
                      index: Tensor | None = None) -> Tensor:
    """Rows ordered by Krum score, best first.

    The score of row i is the sum of its squared distances to its n - f - 2 nearest
    neighbours (Definition 3 of Fall of Empires; Section 2.3.2 of Hidden Vulnerability).
    ``sqdist`` may be the distance matrix of a subset (Bulyan's shrinking set): the neighbour
    count then follows that subset's size, and is at least 0.

    Ties. A caller that keeps the first ``cut`` rows gets them independently of the row
    numbering: rows of equal score on both sides of the cut are ordered by their next
    nearest neighbours (the squared distance to the (k+1)-th, then the (k+2)-th, ...: Krum's
    own criterion with the neighbourhood widened until it separates them), then by their
    values ``rows[index[i]]`` (lexicographic), which only leaves rows of equal values to the
    index. Exact ties are not rare: with k = 0 neighbours (Bulyan's last iterations for
    f = 1) every score is 0, and copies of one vector share their score.
    """
    n = sqdist.shape[0]
    k = max(n - f - 2, 0)
    others = sqdist.detach().numpy().copy()
    np.fill_diagonal(others, np.inf)
    nearest = torch.from_numpy(np.sort(others, axis=1))
    return rank_by_sum(nearest[:, :k], cut=cut, profile=nearest[:, k:], rows=rows, index=index,
                       presorted=True)


def check_krum(n: int, f: int) -> None:
    check_f("krum", n, f)
    require("krum", n >= 2 * f + 3, "n >= 2f + 3", n, f)


def krum_selection(geo: Geometry, f: int, **_: object) -> Tensor:
    """The row Krum selects, from the geometry alone."""
    return krum_scores_order(geo.sqdist, f, cut=1, rows=geo.rows)[:1]


@register("krum", summary="the vector with the least squared distance to its n - f - 2 nearest",
          selects_rows=True, selection=krum_selection, constraints={"p": P_NORM},
          requires=check_krum)
def krum_select(gradients: Tensor, f: int, *, p: float = 2.0) -> Aggregation:
    """Krum: the input vector with the least sum of squared distances to its n - f - 2
    nearest neighbours (Blanchard et al.; Definition 3 of Xie et al., Generalized
    Byzantine-tolerant SGD). Needs n >= 2f + 3. ``p`` selects the l_p norm (Hidden
    Vulnerability 2.3.2 allows any; 2 is Krum's). Rows of equal score are told apart by
    their further neighbours, then by value, never by their index
    (:func:`krum_scores_order`)."""
    x = as_gradients(gradients, "krum")
    check_krum(x.shape[0], f)
    best = krum_selection(geometry(x, p), f)
    return Aggregation(x[int(best[0])].clone(), best)


def check_multi_krum(n: int, f: int, m: int | None = None) -> None:
    """Multi-Krum's precondition, and ``m <= n`` (``m >= 1`` is a declared constraint)."""
    check_f("multi-krum", n, f)
    require("multi-krum", n >= 2 * f + 3, "n >= 2f + 3", n, f)
    if m is not None:
        require("multi-krum", 1 <= m <= n, "1 <= m <= n", n, f, m=m)


def multi_krum_selection(geo: Geometry, f: int, *, m: int | None = None,
                         **_: object) -> Tensor:
    """The m rows (sorted) Multi-Krum averages, from the geometry alone."""
    n = geo.sqdist.shape[0]
    m = n - f if m is None else m
    return torch.sort(krum_scores_order(geo.sqdist, f, cut=m, rows=geo.rows)[:m]).values


@register("multi-krum", summary="mean of the m vectors with the best Krum scores",
          selects_rows=True, selection=multi_krum_selection,
          constraints={"m": [Interval(Integral, 1, None, closed="left"), None], "p": P_NORM},
          requires=check_multi_krum)
def multi_krum_select(gradients: Tensor, f: int, *, m: int | None = None,
                      p: float = 2.0) -> Aggregation:
    """Multi-Krum: the mean of the ``m`` vectors with the best Krum scores (Blanchard et al.),
    ``m = n - f`` by default. Scores are computed once, on all n vectors; rows of equal score
    across the m-th place are told apart as in :func:`krum_scores_order`."""
    x = as_gradients(gradients, "multi-krum")
    n = x.shape[0]
    check_multi_krum(n, f, m)
    geo = geometry(x, p)
    chosen = multi_krum_selection(geo, f, m=m)
    return Aggregation(geo.mean(x, chosen), chosen)
