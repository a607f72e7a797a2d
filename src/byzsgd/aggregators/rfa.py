"""Robust federated aggregation, RFA: the smoothed Weiszfeld algorithm (Pillutla, Kakade,
Harchaoui, "Robust Aggregation for Federated Learning", IEEE Trans. Signal Processing 2022,
Algorithm 2)."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor

from byzsgd.constraints import Interval, Options

from ._base import Aggregation, as_gradients, check_f, require
from ._registry import register
from .distances import geometry
from .geomed import medoid_order, squared_distances_to_combination

INITS = ("medoid", "mean")


def check_rfa(n: int, f: int) -> None:
    """The precondition on n and f (nu, iters and init are declared constraints)."""
    check_f("rfa", n, f)
    require("rfa", n >= 2 * f + 1, "n >= 2f + 1 (a majority of correct vectors)", n, f)


@register("rfa",
          summary="smoothed Weiszfeld, T iterations "
                  "(Pillutla et al. 2022, RFA)",
          constraints={"nu": [Interval(Real, 0, math.inf, closed="neither")],
                       "iters": [Interval(Integral, 1, None, closed="left")],
                       "init": [Options(INITS)]},
          requires=check_rfa)
def rfa_select(gradients: Tensor, f: int, *, nu: float = 0.1, iters: int = 3,
               init: str = "medoid") -> Aggregation:
    """Smoothed Weiszfeld (Pillutla et al., IEEE TSP 2022, Algorithm 2, equal weights
    alpha_i = 1/n): ``iters`` times ``v <- sum_i beta_i x_i / sum_i beta_i`` with
    ``beta_i = alpha_i / max(nu, |v - x_i|)``, the minimizer of the nu-smoothed geometric
    median objective (eq. (6)). ``nu = 0.1`` and ``iters = 3`` are ByzFL's defaults.

    Unlike ``geomed`` (Weiszfeld run to a relative tolerance, distances floored relative to
    their scale), this is a fixed number of iterations with the absolute smoothing nu.
    The start v^(0) is free in the paper; ``init="medoid"`` (default) starts at the input
    vector of least summed distance, so that a few iterations from a hostile start are not
    needed; ``"mean"`` starts at the mean of the valid rows (Pillutla et al.'s code).
    Distances come from the centered Gram matrix (``distances.geometry``), each iteration
    costs O(n^2), the output one pass. Rows with non-finite values or norm are left out.
    """
    x = as_gradients(gradients, "rfa")
    n = x.shape[0]
    check_rfa(n, f)
    geo = geometry(x)
    assert geo.gram is not None
    members = torch.nonzero(geo.valid, as_tuple=True)[0]
    if members.numel() == 0:
        return Aggregation(x.new_zeros(x.shape[1]))
    gram = geo.gram[members][:, members]
    k = members.numel()
    if init == "medoid":
        alpha = torch.zeros(k, dtype=torch.float64)
        # The medoid with its ties settled by geometry, then by value: never by row order.
        alpha[medoid_order(geo, members, rows=x)[0]] = 1.0
    else:
        alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
    for _ in range(iters):
        dist = squared_distances_to_combination(gram, alpha).sqrt_()
        beta = 1.0 / dist.clamp_(min=nu)
        alpha = beta / beta.sum()
    weights = torch.zeros(n, dtype=torch.float64)
    weights[members] = alpha
    return Aggregation(geo.combine(x, weights))
