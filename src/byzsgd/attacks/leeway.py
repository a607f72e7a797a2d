"""The attack of El Mhamdi et al. on l_p-norm-based rules (The Hidden Vulnerability of
Distributed Learning in Byzantium, Section 3.2-3.3, Appendix B).

Every Byzantine worker sends ``B(gamma_m) = mean(honest) + gamma_m * E`` where ``E`` is one
coordinate ``e_k`` (3.2, finite p) or the all-ones vector (3.3, infinite norm) and gamma_m is
the largest gamma for which the deployed rule still selects a Byzantine vector. The paper
estimates gamma_m "by a simple linear regression"; here it is searched directly by asking the
rule: the input (n, d) is the h honest rows followed by f copies of B(gamma), and B is
selected when any index >= h is in ``rule.select(input).selected``.

Search: gamma starts at the spread of the honest rows (the root mean square deviation of
their values from the mean, 1 when that is 0) and doubles while B(gamma) is selected; the
last selected and the first unselected gammas are then bisected until they are within a
relative tolerance ``tol``. If B(gamma) is not selected even for the smallest gammas tried,
the result is gamma = 0 (B = the mean). This finds the first boundary along the doubling
sequence; selection is usually, not provably, monotone in gamma.

Each question to the rule costs O(n^2), not a pass over the (n, d) input: the distance-based
selection rules decide from the pairwise geometry alone (``BoundRule.selection``), and the
geometry of [honest; B(gamma) x f] is known in closed form once the honest rows' geometry is
(:class:`CandidateGeometry`, for the l_2 and l_inf norms of the paper). Other norms, or honest
rows with non-finite values, fall back to running the rule on the assembled input.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from byzsgd.aggregators._gram import centered_gram
from byzsgd.aggregators._linf import linf_distances
from byzsgd.aggregators.distances import Geometry, finish_geometry, gram_distances
from byzsgd.constraints import Constraints, Interval, Options
from byzsgd.kernels import gram_partial_terms

from ._base import FINITE, ClassicAttack, Context
from ._registry import register
from .alie import mean_std

if TYPE_CHECKING:
    from byzsgd.aggregators import Rule


class CandidateGeometry:
    """The geometry of the candidate input [h honest rows; f copies of c + gamma e] as a
    function of gamma, for the l_2 and l_inf norms: computed once from the honest rows
    (O(h^2 d)), then O(n^2) per gamma. With u_i = x_i - c:

    * l_2: the Gram matrix centred at c has blocks U U^T, gamma U e and gamma^2 |e|^2;
    * l_inf, e = +-1, the all-ones vector or its opposite (Hidden Vulnerability 3.3), with
      g = +-gamma: |u_i - g 1|_inf = max(max_k u_ik - g, g - min_k u_ik);
    * l_inf, e = +-e_k (3.2): |u_i -+ gamma e_k|_inf = max(max_{j != k} |u_ij|, |+-u_ik - gamma|).

    ``build`` returns None for other norms or directions, or non-finite honest rows.

    The deployed rule sees B(gamma) in the input's precision, where a huge gamma overflows:
    B is then an invalid row (never selected), as in :func:`~byzsgd.aggregators.distances.
    geometry` -- when c + gamma e is not finite in that dtype, and for l_2 also when the
    products summed into the Gram matrix overflow (|gamma e_k| above the square root of the
    dtype's largest value).
    """

    def __init__(self, h: int, f: int, p: float, pairs: Tensor, terms: tuple[Tensor, ...],
                 kind: str, reach: float) -> None:
        self.h, self.f, self.p, self.kind = h, f, p, kind
        self.pairs = pairs  # honest-honest: Gram (l_2) or squared distances (l_inf)
        self.terms = terms
        self.reach = reach  # the largest |gamma| for which B is a valid row

    @classmethod
    def build(cls, honest: Tensor, center: Tensor, e: Tensor, f: int,
              p: float) -> CandidateGeometry | None:
        h = honest.shape[0]
        if h == 0 or not bool(torch.isfinite(honest).all()) \
                or not bool(torch.isfinite(center).all()):
            return None
        u = (honest.double() - center.double())
        ed = e.double()
        # B(gamma) is sent in the input's precision; the rule computes in float32 at least
        work = honest if honest.dtype in (torch.float32, torch.float64) else honest.float()
        top = torch.finfo(honest.dtype).max
        e_max = float(ed.abs().max())
        if e_max == 0:
            return None
        reach = (top - float(center.double().abs().max())) / e_max
        if p == 2:
            gram = centered_gram(work, center.to(work.dtype))
            # the Gram kernel sums up to one chunk of products in the rule's precision
            terms = min(int(torch.count_nonzero(ed)), gram_partial_terms(work.dtype))
            return cls(h, f, p, gram, (u @ ed, ed @ ed), "l2",
                       min(reach, math.sqrt(torch.finfo(work.dtype).max / terms) / e_max))
        if p != math.inf:
            return None
        nonzero = torch.nonzero(ed).flatten()
        sign = float(ed[nonzero[0]])
        if abs(sign) != 1.0:
            return None
        if nonzero.numel() == ed.numel() and bool((ed == sign).all()):
            kind = "ones"
            terms = (u.amax(dim=1), u.amin(dim=1), torch.tensor(sign, dtype=torch.float64))
        elif nonzero.numel() == 1:
            kind, k = "coordinate", int(nonzero[0])
            rest = u.abs()
            rest[:, k] = 0.0
            terms = (rest.amax(dim=1), sign * u[:, k])
        else:
            return None
        pairs = linf_distances(work).square_()
        return cls(h, f, p, pairs, terms, kind, reach)

    def at(self, gamma: float) -> Geometry:
        """The geometry of [honest; f copies of c + gamma e] in the norm ``p``."""
        h, n = self.h, self.h + self.f
        if self.kind == "l2":
            ue, ee = self.terms
            gram = torch.empty((n, n), dtype=torch.float64)
            gram[:h, :h] = self.pairs
            gram[:h, h:] = (gamma * ue)[:, None]
            gram[h:, :h] = (gamma * ue)[None, :]
            gram[h:, h:] = gamma * gamma * ee
            sq, valid = gram_distances(gram)
            valid[h:] &= abs(gamma) <= self.reach
            return finish_geometry(sq, valid, gram, 2.0)
        if self.kind == "ones":  # e = s 1, s = +-1: |u - g 1| = max(max u - g, g - min u)
            top, bottom, sign = self.terms
            shift = float(sign) * gamma
            to_b = torch.maximum(top - shift, shift - bottom)
        else:
            rest, uk = self.terms
            to_b = torch.maximum(rest, (uk - gamma).abs())
        sq = torch.zeros((n, n), dtype=torch.float64)
        sq[:h, :h] = self.pairs
        sq[:h, h:] = to_b.square()[:, None]
        sq[h:, :h] = to_b.square()[None, :]
        valid = torch.ones(n, dtype=torch.bool)
        valid[h:] = abs(gamma) <= self.reach
        return finish_geometry(sq, valid, None, self.p)


class _Leeway(ClassicAttack):
    supported_knowledge = ("omniscient", "own")
    constraints: ClassVar[Constraints] = {
        "sign": [Options((1, -1))],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_steps": [Interval(Integral, 1, None, closed="left")],
        "gamma": [*FINITE, None],
    }

    def __init__(self, *, sign: int = 1, tol: float = 1e-3, max_steps: int = 200,
                 gamma: float | None = None, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.sign = int(sign)
        self.tol = float(tol)
        self.max_steps = int(max_steps)
        self.gamma = None if gamma is None else float(gamma)
        #: The signed gamma used in the last call (searched, or the fixed ``gamma``).
        self.last_gamma: float | None = None

    def __call__(self, **kwargs: Any) -> Tensor:
        self.last_gamma = None
        return super().__call__(**kwargs)

    def direction(self, d: int, dtype: torch.dtype) -> Tensor:
        raise NotImplementedError

    def forge(self, ctx: Context) -> Tensor:
        center_from = ctx.source(self.knowledge)
        center = center_from.detach().mean(dim=0)
        if ctx.d == 0:  # no coordinate to shift: the f rows are empty
            self.last_gamma = 0.0 if self.gamma is None else self.gamma
            return ctx.rows(center)
        e = self.direction(ctx.d, center.dtype)
        if self.gamma is not None:
            self.last_gamma = self.gamma
            return ctx.rows(center + self.gamma * e)
        rule = self._rule(ctx)
        if self.knowledge == "omniscient":
            honest = ctx.need_honest()
        else:
            honest = self._simulated_honest(ctx, center_from)
        magnitude = self.search(rule, honest.detach(), center, self.sign * e, ctx.f)
        self.last_gamma = self.sign * magnitude
        return ctx.rows(center + self.last_gamma * e)

    def _rule(self, ctx: Context) -> Rule:
        rule = ctx.rule
        if rule is None or not hasattr(rule, "select"):
            raise ValueError(f"{self.name}: needs rule= (the deployed Rule, e.g. a BoundRule) "
                             f"to search gamma_m, or a fixed gamma=")
        if not getattr(rule, "selects_rows", False):
            name = getattr(rule, "name", type(rule).__name__)
            raise ValueError(f"{self.name}: rule {name!r} does not select rows, so "
                             f"'gamma_m, the largest gamma whose B(gamma) is selected' is "
                             f"undefined; use a selection-based rule (krum, multi-krum, "
                             f"medoid, brute, bulyan) or pass a fixed gamma=")
        return rule

    def _simulated_honest(self, ctx: Context, own: Tensor) -> Tensor:
        """Without the honest gradients, the attacker searches against h rows drawn from
        the per-coordinate normal model of Hidden Vulnerability B.1 fitted to its own f
        gradients (mean and Bessel-corrected standard deviation)."""
        n = ctx.need_n()
        mu, sigma = mean_std(own)
        noise = torch.randn((n - ctx.f, ctx.d), generator=ctx.generator, dtype=torch.float64,
                            device="cpu").to(mu.device)
        return (mu.double() + noise * sigma.double()).to(own.dtype)

    def selected(self, rule: Rule, honest: Tensor, byzantine: Tensor, f: int) -> bool:
        """Whether ``rule`` selects one of the f copies of ``byzantine`` (d,) appended to
        ``honest`` (running the rule on the assembled input)."""
        h = honest.shape[0]
        x = torch.cat([honest, byzantine.to(honest.dtype).expand(f, -1)])
        chosen = rule.select(x).selected
        return chosen is not None and bool((chosen >= h).any())

    def search(self, rule: Rule, honest: Tensor, center: Tensor, e: Tensor,
               f: int) -> float:
        """The largest gamma >= 0 (to relative tolerance ``tol``) such that
        ``center + gamma * e`` is selected; 0 when no tried gamma > 0 is. Rules without
        ``selection`` (an optional member of the Rule protocol) are run on the assembled
        input."""
        h = honest.shape[0]
        selection = getattr(rule, "selection", None)
        candidates = None if selection is None else CandidateGeometry.build(
            honest, center, e, f, float(getattr(rule, "p", 2.0)))

        def is_selected(gamma: float) -> bool:
            if candidates is not None:
                chosen = selection(candidates.at(gamma))
                if chosen is not None:
                    return bool((chosen >= h).any())
            return self.selected(rule, honest, center + gamma * e, f)

        spread = float((honest - center).double().square().mean().sqrt()) if honest.numel() \
            else 0.0
        start = spread if math.isfinite(spread) and spread > 0 else 1.0
        gamma = start
        steps = 0
        lo, hi = 0.0, None
        while steps < self.max_steps:
            steps += 1
            if is_selected(gamma):
                lo = gamma
                gamma *= 2.0
                if not math.isfinite(gamma):
                    return lo
            else:
                hi = gamma
                break
        if hi is None:
            return lo
        while steps < self.max_steps and hi - lo > self.tol * lo:
            steps += 1
            mid = (lo + hi) / 2 if lo > 0 else hi / 2
            if lo == 0 and mid < start * 2.0 ** -60:
                break  # never selected above 0: give up, gamma_m = 0
            if is_selected(mid):
                lo = mid
            else:
                hi = mid
        return lo


@register
class LpCoordinate(_Leeway):
    """Attack on finite-norm rules (Hidden Vulnerability 3.2): ``E = e_coordinate``.

    Parameters: ``coordinate`` (index of the attacked coordinate, 0-based), ``sign``
    (+1/-1), ``tol`` (relative tolerance of the search), ``max_steps`` (rule evaluations),
    ``gamma`` (a fixed gamma, skipping the search; any rule then works), ``knowledge``
    (``"omniscient"``: center on the honest mean and search against the honest rows;
    ``"own"``: the variant the paper notes, centered on ``own.mean(0)``, searching against
    honest rows simulated from the attackers' own gradients, see ``_simulated_honest``).
    ``last_gamma`` records the signed gamma of the last call.
    """

    name = "lp-coordinate"
    summary = ("mean(honest) + gamma_m e_k, gamma_m the largest still selected (El Mhamdi "
               "et al. 3.2)")
    constraints: ClassVar[Constraints] = {
        **_Leeway.constraints,
        "coordinate": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, *, coordinate: int = 0, sign: int = 1, tol: float = 1e-3,
                 max_steps: int = 200, gamma: float | None = None,
                 knowledge: str | None = None) -> None:
        super().__init__(sign=sign, tol=tol, max_steps=max_steps, gamma=gamma,
                         knowledge=knowledge)
        self.coordinate = int(coordinate)

    def direction(self, d: int, dtype: torch.dtype) -> Tensor:
        if self.coordinate >= d:
            raise ValueError(f"{self.name}: coordinate must satisfy 0 <= coordinate < d={d}, "
                             f"got coordinate={self.coordinate}")
        e = torch.zeros(d, dtype=dtype)
        e[self.coordinate] = 1.0
        return e


@register
class Linf(_Leeway):
    """Attack on the infinite norm (Hidden Vulnerability 3.3): ``E = (1, ..., 1)``; the
    same search and parameters as ``lp-coordinate`` (without ``coordinate``)."""

    name = "linf"
    summary = ("mean(honest) + gamma_m (1,...,1), gamma_m the largest still selected "
               "(El Mhamdi et al. 3.3)")

    def __init__(self, *, sign: int = 1, tol: float = 1e-3, max_steps: int = 200,
                 gamma: float | None = None, knowledge: str | None = None) -> None:
        super().__init__(sign=sign, tol=tol, max_steps=max_steps, gamma=gamma,
                         knowledge=knowledge)

    def direction(self, d: int, dtype: torch.dtype) -> Tensor:
        return torch.ones(d, dtype=dtype)
