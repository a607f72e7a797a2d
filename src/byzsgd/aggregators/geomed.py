"""Geometric median (Weiszfeld on the Gram matrix) and Medoid."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor

from byzsgd.constraints import Interval

from ._base import P_NORM, Aggregation, as_gradients, check_f, require
from ._registry import register
from .distances import Geometry, geometry, rank_by_sum

#: Weiszfeld's relative tolerance and iteration cap (geomed, and Bulyan with base geomed).
WEISZFELD = {"tol": [Interval(Real, 0, math.inf, closed="neither")],
             "max_iter": [Interval(Integral, 1, None, closed="left")]}


def weiszfeld(gram: Tensor, members: Tensor, *, tol: float = 1e-6, max_iter: int = 200,
              eps: float = 1e-8) -> Tensor:
    """Weights ``alpha`` (n,), summing to 1 over ``members``, such that
    ``sum_i alpha_i x_i`` is the geometric median of the member rows.

    Weiszfeld's fixed point ``z <- sum_i x_i/|z - x_i| / sum_i 1/|z - x_i|`` run entirely on
    the (centered) Gram matrix: with ``z = sum_i alpha_i y_i``,
    ``|z - y_j|^2 = alpha^T G alpha - 2 (G alpha)_j + G_jj``, so an iteration costs O(k^2)
    instead of a pass over the d coordinates. Distances are floored at ``eps`` times the
    initial mean distance (the usual smoothing that keeps Weiszfeld defined when the
    iterate lands on a data point). Stops when the objective ``sum_j |z - x_j|`` improves by
    less than ``tol`` (relative) or after ``max_iter`` iterations.
    """
    g = gram[members][:, members]
    diag = g.diagonal()
    k = g.shape[0]
    alpha = torch.full((k,), 1.0 / k, dtype=g.dtype)
    floor = None
    previous = float("inf")
    for _ in range(max_iter):
        g_alpha = g @ alpha
        dist = (alpha @ g_alpha - 2.0 * g_alpha + diag).clamp_(min=0.0).sqrt_()
        objective = float(dist.sum())
        if floor is None:
            floor = max(eps * objective / k, torch.finfo(g.dtype).tiny)
        if previous - objective <= tol * objective:
            break
        previous = objective
        inv = 1.0 / dist.clamp_(min=floor)
        alpha = inv / inv.sum()
    out = torch.zeros(gram.shape[0], dtype=gram.dtype)
    out[members] = alpha
    return out


def squared_distances_to_combination(gram: Tensor, alpha: Tensor) -> Tensor:
    """``|sum_i alpha_i y_i - y_j|^2`` for every row j (alpha sums to 1)."""
    g_alpha = gram @ alpha
    return (alpha @ g_alpha - 2.0 * g_alpha + gram.diagonal()).clamp_(min=0.0)


def check_geomed(n: int, f: int) -> None:
    check_f("geomed", n, f)
    require("geomed", n >= 2 * f + 1, "n >= 2f + 1 (a majority of correct vectors)", n, f)


@register("geomed", summary="geometric median (Weiszfeld), Xie et al. Def. 6",
          constraints=WEISZFELD, requires=check_geomed)
def geomed_select(gradients: Tensor, f: int, *, tol: float = 1e-6,
                  max_iter: int = 200) -> Aggregation:
    """Geometric median: argmin_z sum_i |z - x_i| (Definition 6 of Xie et al., Generalized
    Byzantine-tolerant SGD), approximated by Weiszfeld's algorithm to relative tolerance
    ``tol`` on the objective, at most ``max_iter`` iterations. Rows with non-finite values (or
    an overflowing norm) are left out; fewer than n/2 of them cannot move the result far
    (Theorem 3)."""
    x = as_gradients(gradients, "geomed")
    check_geomed(x.shape[0], f)
    geo = geometry(x)
    assert geo.gram is not None
    members = torch.nonzero(geo.valid, as_tuple=True)[0]
    if members.numel() == 0:
        return Aggregation(x.mean(dim=0))
    alpha = weiszfeld(geo.gram, members, tol=tol, max_iter=max_iter)
    return Aggregation(geo.combine(x, alpha))


def check_medoid(n: int, f: int) -> None:
    check_f("medoid", n, f)
    require("medoid", n >= 2 * f + 1, "n >= 2f + 1 (a majority of correct vectors)", n, f)


def medoid_selection(geo: Geometry, f: int, **_: object) -> Tensor:
    """The row the Medoid selects, from the geometry alone."""
    return rank_by_sum(geo.dist)[:1]


@register("medoid", summary="the input vector with the least sum of distances, Xie et al. Def. 9",
          selects_rows=True, selection=medoid_selection, constraints={"p": P_NORM},
          requires=check_medoid)
def medoid_select(gradients: Tensor, f: int, *, p: float = 2.0) -> Aggregation:
    """Medoid: the input vector with the least sum of distances to the others (Definition 9 of
    Xie et al.; "GeoMed" in Hidden Vulnerability 2.3.3, ties to the smallest index)."""
    x = as_gradients(gradients, "medoid")
    check_medoid(x.shape[0], f)
    best = medoid_selection(geometry(x, p), f)
    return Aggregation(x[int(best[0])].clone(), best)
