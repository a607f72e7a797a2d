"""Divide-and-Conquer, DnC (Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing
Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Algorithm 2)."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor

from byzsgd.constraints import Interval

from ._base import Aggregation, as_gradients, check_f, require
from ._registry import register
from ._rows import row_finite


def dnc_removed(f: int, c: float) -> int:
    """How many vectors each DnC iteration removes: floor(c f)."""
    return math.floor(c * f)


def top_right_singular_vector(m: Tensor) -> Tensor:
    """The top right singular vector of ``m`` (k, b), k small: from the top eigenvector u of
    the (k, k) matrix m m^T, v = m^T u / |m^T u| (O(k^2 b), where an SVD of the (k, b) matrix
    costs far more for b = 10000). Its sign is arbitrary (DnC only squares projections)."""
    _, vectors = torch.linalg.eigh(m @ m.T)
    v = m.T @ vectors[:, -1]
    norm = torch.linalg.vector_norm(v)
    return v / norm if norm > 0 else torch.zeros_like(v)


def check_dnc(n: int, f: int, niters: int = 1, c: float = 1.0, b: int = 10000,
              seed: int = 0) -> None:
    check_f("dnc", n, f)
    for name, value in (("niters", niters), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"dnc needs {name} >= 1 (an int), got {name}={value}")
    if not (isinstance(c, int | float) and not isinstance(c, bool) and 0 <= c < math.inf):
        raise ValueError(f"dnc needs a filtering fraction 0 <= c < inf, got c={c}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"dnc: seed must be an int, got {type(seed).__name__}")
    require("dnc", n - dnc_removed(f, c) >= 1, "n - floor(c f) >= 1 (vectors left to average)",
            n, f, c=c)


@register("dnc",
          summary="drop the c*f largest scores along the top singular direction of "
                  "subsampled coordinates (Shejwalkar & Houmansadr 2021, Alg. 2)",
          selects_rows=True, requires=check_dnc,
          constraints={"niters": [Interval(Integral, 1, None, closed="left")],
                       "c": [Interval(Real, 0, math.inf, closed="left")],
                       "b": [Interval(Integral, 1, None, closed="left")],
                       "seed": [Interval(Integral, 0, 2**63 - 1, closed="both")],
                       "generator": [torch.Generator, None]})
def dnc_select(gradients: Tensor, f: int, *, niters: int = 1, c: float = 1.0, b: int = 10000,
               seed: int = 0, generator: torch.Generator | None = None) -> Aggregation:
    """DnC (Shejwalkar & Houmansadr, NDSS 2021, Algorithm 2): ``niters`` times, sample
    ``b`` coordinates at random (all d when b >= d), center the sub-sampled vectors on
    their mean mu, take the top right singular vector v of the centered (n, b) matrix, score
    each vector by ``<x_i^r - mu, v>^2`` and keep the n - floor(c f) lowest scores; the
    output is the mean of the vectors kept in every iteration. Defaults are the paper's
    (c = 1, b = 10000, niters = 1).

    The coordinates are drawn from ``generator`` (the bound rule passes one seeded per
    round), else from a generator seeded with ``seed``. Ties in score go to the lower index.
    ``selected`` holds the averaged rows. Rows with a non-finite value anywhere are removed
    first (they count against the floor(c f) of each iteration, score +inf); the
    sub-sampled algebra is in float64, and the scores are ranked in a form that keeps their
    order when one huge row dominates the mean (see the code).
    """
    x = as_gradients(gradients, "dnc")
    n, d = x.shape
    check_dnc(n, f, niters, c, b, seed)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    keep = n - dnc_removed(f, c)
    finite = torch.tensor([row_finite(x[i]) for i in range(n)], dtype=torch.bool)
    good = finite.clone()
    for _ in range(niters):
        coords = torch.randperm(d, generator=g)[: min(b, d)].sort().values
        sub = x[:, coords.to(x.device)].double().cpu()  # n x b values
        rows = torch.nonzero(finite, as_tuple=True)[0]
        score = torch.full((n,), math.inf, dtype=torch.float64)
        if rows.numel():
            mu = sub[rows].mean(dim=0)
            top = top_right_singular_vector(sub[rows] - mu)
            # <x_i - mu, v>^2 ranked as e_i (e_i - 2M) = <x_i - mu, v>^2 - M^2, with
            # e_i = <x_i - c, v>, M = <mu - c, v> and c the coordinate-wise median: the same
            # order in exact arithmetic, and in float64 it still tells a row at 1e20 from
            # an honest one when a float32-max row dominates mu (the squares would not)
            c = sub[rows].median(dim=0).values
            e = (sub[rows] - c) @ top
            big_m = float((mu - c) @ top)
            score[rows] = e * (e - 2.0 * big_m)
            score = torch.nan_to_num(score, nan=math.inf)
        lowest = torch.argsort(score, stable=True)[:keep]
        kept = torch.zeros(n, dtype=torch.bool)
        kept[lowest] = True
        good &= kept
    chosen = torch.nonzero(good, as_tuple=True)[0]
    if chosen.numel() == 0:
        return Aggregation(x.new_zeros(d), chosen)
    if bool(finite.all()):  # one pass over x, zero weight on the rows removed
        weights = x.new_zeros(n)
        weights[chosen.to(x.device)] = 1.0 / chosen.numel()
        return Aggregation(torch.mv(x.T, weights), chosen)
    weights = x.new_full((chosen.numel(),), 1.0 / chosen.numel())
    return Aggregation(torch.mv(x.index_select(0, chosen.to(x.device)).T, weights), chosen)
