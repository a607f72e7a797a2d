"""A Little Is Enough and inner product manipulation with their scale line-searched against the
deployed rule: the "optimal" ALIE and IPM of ByzFL (Allouah et al., "Fixing by Mixing",
AISTATS 2023, after Baruch et al. 2019 and Xie et al. 2020), written from the definition.

Every Byzantine worker sends ``B(t) = a + t e``:

* ``optimal-alie``: ``mu + z sigma`` (a = mu, e = sigma: the honest vectors' per-coordinate
  mean and Bessel-corrected standard deviation; A Little Is Enough, Algorithm 3);
* ``optimal-ipm``: ``-epsilon mu`` (a = 0, e = -mu; Fall of Empires 6.2);

and the scale t (z, epsilon) maximizes the damage the deployed rule lets through:

    t* = argmax_{t >= 0}  | F([honest; B(t) x f]) - mean(honest) |_2,

F being the rule object the attack is given, called as ``F(x) -> (d,)`` on the assembled
(n, d) input: whatever it does inside (a pre-aggregation chain, clipping, state) is what is
maximized. The search is bounded to ``evals`` calls of F (:func:`line_search`): doubling or
halving from ``start`` until the objective stops increasing, then a golden-section search
inside the bracket found; the best t evaluated is sent. It is deterministic given F.

Both read the honest vectors of the round (``knowledge="omniscient"``, as ByzFL's). Honest
rows with a NaN or Inf are left out of mu, sigma and the assembled input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, ClassVar

import torch
from torch import Tensor

from byzsgd.constraints import Constraints, Interval

from ._affine import assembled, finite_rows
from ._base import ClassicAttack, Context
from ._moments import mean_std
from ._registry import register

#: 1 - 1/golden ratio: where a golden-section step probes inside the larger sub-interval.
_GOLDEN = (3.0 - math.sqrt(5.0)) / 2.0
#: Halvings below ``start`` before the search settles on t -> 0.
_MAX_HALVINGS = 40


def line_search(objective: Callable[[float], float], start: float,
                evals: int) -> tuple[float, float, int]:
    """``(t, objective(t), calls)``: the best t >= 0 found with at most ``evals`` calls.

    Expansion: from ``start``, double t while the objective increases (or, when 2 start is
    not better than start, halve it while it does not decrease: beyond the edge where a
    selection rule stops selecting the candidates the objective is flat), which brackets a
    maximum as
    lo < mid < hi with objective(mid) at least that of both ends. Contraction: golden-section
    steps inside the larger half of the bracket, keeping the best point as mid. A NaN
    objective counts as -inf. Among equally good points the smallest t is returned."""
    cache: dict[float, float] = {}

    def value(t: float) -> float:
        if t not in cache:
            v = objective(t)
            cache[t] = v if v == v else -math.inf
        return cache[t]

    def spent() -> bool:
        return len(cache) >= evals

    mid = start
    value(mid)
    lo, hi = 0.0, 2.0 * start
    if spent():
        return mid, cache[mid], len(cache)
    if value(hi) > value(mid):  # go up
        lo, mid = mid, hi
        while not spent():
            nxt = 2.0 * mid
            if not math.isfinite(nxt):
                hi = mid
                break
            if value(nxt) > value(mid):
                lo, mid = mid, nxt
            else:
                hi = nxt
                break
        else:
            hi = 2.0 * mid
    else:  # go down
        for _ in range(_MAX_HALVINGS):
            if spent():
                break
            nxt = mid / 2.0
            if value(nxt) >= value(mid):  # on a plateau keep looking below (a cliff's edge)
                hi, mid = mid, nxt
            else:
                lo = nxt
                break
    while not spent():
        if hi - mid >= mid - lo:
            x = mid + _GOLDEN * (hi - mid)
            if x in cache or x == mid:
                break
            if value(x) > value(mid):
                lo, mid = mid, x
            else:
                hi = x
        else:
            x = mid - _GOLDEN * (mid - lo)
            if x in cache or x == mid:
                break
            if value(x) > value(mid):
                hi, mid = mid, x
            else:
                lo = x
    best = max(cache, key=lambda t: (cache[t], -t))
    return best, cache[best], len(cache)


class _Optimal(ClassicAttack):
    supported_knowledge = ("omniscient",)
    constraints: ClassVar[Constraints] = {
        "evals": [Interval(Integral, 2, None, closed="left")],
        "start": [Interval(Real, 0, None, closed="neither")],
    }
    #: The name of the scale in messages.
    scale = "t"

    def __init__(self, *, evals: int = 20, start: float = 1.0,
                 knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.evals = int(evals)
        self.start = float(start)
        #: The scale sent in the last call, the objective it reached, and the rule calls.
        self.last_scale: float | None = None
        self.last_objective: float | None = None
        self.last_evals: int | None = None

    def __call__(self, **kwargs: Any) -> Tensor:
        self.last_scale = self.last_objective = self.last_evals = None
        return super().__call__(**kwargs)

    def family(self, honest: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, e)`` (float64) of the candidates ``B(t) = a + t e``."""
        raise NotImplementedError

    def forge(self, ctx: Context) -> Tensor:
        rule = ctx.rule
        if rule is None or not callable(rule):
            raise ValueError(f"{self.name}: needs rule= (the deployed rule, a callable "
                             f"rule(x) -> (d,)) to search {self.scale}")
        given = ctx.need_honest().detach()
        honest, mean = finite_rows(self.name, given)
        h, f = honest.shape[0], ctx.f
        a, e = self.family(honest, mean)
        full = assembled(ctx, honest) if honest is given else torch.cat(
            [honest.to(ctx.dtype), torch.empty((f, ctx.d), dtype=ctx.dtype,
                                               device=honest.device)])
        rows = full[h:]

        def objective(t: float) -> float:
            b = (a + t * e).to(ctx.dtype)
            if not bool(torch.isfinite(b).all()):
                return -math.inf
            rows.copy_(b.expand(f, -1))
            value = rule(full)
            return float((value.double() - mean).norm())

        t, best, calls = line_search(objective, self.start, self.evals)
        self.last_scale, self.last_objective, self.last_evals = t, best, calls
        return ctx.rows(a + t * e)


@register
class OptimalAlie(_Optimal):
    """``mu + z sigma`` with z >= 0 line-searched to maximize the distance between the deployed
    rule's output and the honest mean (the optimal ALIE of ByzFL; Baruch et al. 2019,
    Algorithm 3, with z chosen against the rule instead of z_max). Parameters: ``evals``
    (rule calls, 20 as ByzFL), ``start`` (the first z tried, 1), ``knowledge``.
    ``last_scale`` is the z sent, ``last_objective`` the distance it reached."""

    name = "optimal-alie"
    summary = ("mu + z*sigma, z searched against the deployed rule to maximize "
               "|F - mean| (ALIE, Baruch et al.; ByzFL)")
    scale = "z"

    def family(self, honest: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        mu, sigma = mean_std(honest)
        return mu.double(), sigma.double()


@register
class OptimalIpm(_Optimal):
    """``-epsilon mu`` with epsilon >= 0 line-searched to maximize the distance between the
    deployed rule's output and the honest mean (the optimal IPM of ByzFL; Xie et al., Fall of
    Empires 6.2, with epsilon chosen against the rule). Parameters as ``optimal-alie``;
    ``last_scale`` is the epsilon sent."""

    name = "optimal-ipm"
    summary = ("-epsilon*mean, epsilon searched against the deployed rule to maximize "
               "|F - mean| (IPM, Xie et al.; ByzFL)")
    scale = "epsilon"

    def family(self, honest: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(mean), -mean
