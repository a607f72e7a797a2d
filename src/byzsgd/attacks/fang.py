"""The full-knowledge local model poisoning attacks of Fang, Cao, Jia and Gong, "Local Model
Poisoning Attacks to Byzantine-Robust Federated Learning" (USENIX Security 2020), Sections
4.2 (Krum) and 4.3 (trimmed mean and median).

The paper crafts local *models* ``w = w_Re - lr * g``; here the workers send gradients, so
every formula is read through that affine map (a model-space distance is lr times the
gradient-space one; the direction s of the global model's change is ``-sign`` of the benign
gradients' mean; lr cancels out of every decision). As in the authors' code, the direction of
change "under no attack" is estimated by the sign of the benign gradients' sum.

Both attacks are full knowledge: they read the honest gradients of the round
(``knowledge="omniscient"``).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from byzsgd import aggregators
from byzsgd.constraints import Constraints, Interval, Options

from ._affine import AffineCandidates, assembled, finite_rows
from ._base import ClassicAttack, Context
from ._registry import register

if TYPE_CHECKING:
    from byzsgd.aggregators import Rule

ORACLES = ("rule", "krum")


def krum_lambda_bound(sq: Tensor, norms: Tensor, n: int, f: int) -> float:
    """The upper bound on lambda of Fang et al. 4.2 in gradient units:

        1 / ((n - 2f - 1) sqrt(d)) * min_i sum_{l in Gamma_i} |g_l - g_i|
          + 1 / sqrt(d) * max_i |g_i|,

    without the sqrt(d) factors (the caller divides), over the benign gradients g_i, with
    Gamma_i the n - f - 2 benign gradients nearest g_i (``sq``: their squared distances (h, h);
    ``norms``: |g_i|, (h,))."""
    h = sq.shape[0]
    k = min(n - f - 2, h - 1)
    others = sq.clone()
    others.fill_diagonal_(float("inf"))
    nearest = torch.topk(others, k, dim=1, largest=False).values.sqrt() if k > 0 else \
        torch.zeros((h, 0), dtype=sq.dtype)
    return float(nearest.sum(dim=1).min()) / (n - 2 * f - 1) + float(norms.max())


@register
class FangKrum(ClassicAttack):
    """Fang et al.'s full-knowledge attack on Krum (USENIX Security 2020, 4.2).

    Every Byzantine worker sends ``-lambda * s``, ``s = sign(mean of the honest gradients)``:
    the crafted local model ``w_Re - lambda s_model`` deviates from the received global model
    against the direction it would move without attack. lambda starts at the paper's upper
    bound (:func:`krum_lambda_bound` divided by sqrt(d)) and is halved until the deployed rule
    selects a Byzantine row, or until it falls below ``lambda_min`` (1e-5 in the paper), in
    which case the smallest lambda tried is sent. The other c - 1 crafted models of the paper
    lie within epsilon of the first; here they are copies (epsilon = 0).

    ``oracle="rule"`` asks the deployed rule (it must report the rows it selects: krum,
    multi-krum, medoid, brute, bulyan...); ``oracle="krum"`` asks Krum with the round's f,
    which is how the paper transfers this attack to rules that select no row (its Table 3).
    For the l_2 rules each question costs O(n^2) through the candidates' closed-form geometry
    (:class:`~byzsgd.attacks._affine.AffineCandidates`); other rules run on the assembled
    input. ``last_lambda`` and ``last_selected`` record the outcome of the last call.
    """

    name = "fang-krum"
    summary = ("-lambda*sign(mean), lambda halved from the bound until Krum selects it "
               "(Fang et al., USENIX Sec. 2020, 4.2)")
    supported_knowledge = ("omniscient",)
    constraints: ClassVar[Constraints] = {
        "oracle": [Options(ORACLES)],
        "lambda_min": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, oracle: str = "rule", lambda_min: float = 1e-5,
                 knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.oracle = oracle
        self.lambda_min = float(lambda_min)
        self.last_lambda: float | None = None
        self.last_selected: bool | None = None

    def __call__(self, **kwargs: Any) -> Tensor:
        self.last_lambda = self.last_selected = None
        return super().__call__(**kwargs)

    def _oracle(self, ctx: Context) -> Rule:
        if self.oracle == "krum":
            return aggregators.bind("krum", ctx.f)
        rule = ctx.rule
        if rule is None or not hasattr(rule, "select"):
            raise ValueError(f"{self.name}: needs rule= (the deployed rule) to search lambda, "
                             f"or oracle='krum'")
        if not getattr(rule, "selects_rows", True):
            raise ValueError(f"{self.name}: rule {getattr(rule, 'name', rule)!r} does not "
                             f"select rows, so 'the rule selects the crafted model' is "
                             f"undefined; use oracle='krum' (the paper's transfer to other "
                             f"rules)")
        return rule

    def forge(self, ctx: Context) -> Tensor:
        n = ctx.need_n()
        f = ctx.f
        if n - 2 * f - 1 <= 0:
            raise ValueError(f"{self.name}: the lambda bound needs n > 2f + 1, got n={n}, "
                             f"f={f}")
        rule = self._oracle(ctx)
        honest, mean = finite_rows(self.name, ctx.need_honest().detach())
        h = honest.shape[0]
        s = torch.sign(mean)
        zero = torch.zeros_like(mean)
        geo = AffineCandidates(honest, zero, -s, f, center=mean)
        # |g_i|^2 = |u_i|^2 + 2 u_i.c + |c|^2, where geo.uv = u_i.(0 - c) = -u_i.c
        norms = (geo.gram.diagonal() - 2.0 * geo.uv + float(mean @ mean)).clamp(min=0)
        lam = krum_lambda_bound(geo.benign_sq, norms.sqrt(), n, f) / math.sqrt(ctx.d)
        full = None
        p = float(getattr(rule, "p", 2.0))

        def selected(lam: float) -> bool:
            nonlocal full
            if p == 2.0 and hasattr(rule, "selection"):
                chosen = rule.selection(geo.at(lam))
                if chosen is not None:
                    return bool((chosen >= h).any())
            if full is None:
                full = assembled(ctx, honest) if h + f == n else torch.cat(
                    [honest, torch.empty((f, ctx.d), dtype=honest.dtype,
                                         device=honest.device)])
            full[h:].copy_((-lam * s).to(full.dtype).expand(f, -1))
            chosen = rule.select(full).selected
            return chosen is not None and bool((chosen >= h).any())

        ok = False
        while math.isfinite(lam) and lam > 0:
            ok = selected(lam)
            if ok or lam / 2.0 < self.lambda_min:
                break
            lam /= 2.0
        self.last_lambda, self.last_selected = lam, ok
        return ctx.rows(-lam * s)


@register
class FangTrim(ClassicAttack):
    """Fang et al.'s full-knowledge attack on trimmed mean and median (USENIX Security 2020,
    4.3), in gradient space as in the authors' code.

    Per coordinate j, with ``s_j = sign(sum of the honest g_ij)`` and ``g_max,j``,
    ``g_min,j`` the largest and smallest honest values, each Byzantine worker sends a value
    beyond the honest range on the side opposite to s_j, scaled by a factor drawn uniformly
    from [1, b] (b = 2 in the paper), per worker and coordinate, from ``generator``:

    * s_j > 0: ``g_min,j / u`` if g_min,j > 0, else ``g_min,j * u``;
    * s_j < 0: ``g_max,j * u`` if g_max,j > 0, else ``g_max,j / u``;
    * s_j = 0, or the extreme value 0: 0.

    (In model space: the crafted w_j lie in [w_max,j, b w_max,j] or [w_max,j / b, w_max,j]
    when the parameter would decrease, symmetrically with w_min,j otherwise.) The same attack
    is the paper's attack on the median. ``b`` must be > 1.
    """

    name = "fang-trim"
    summary = ("values beyond the honest min/max against sign(mean), scaled in [1, b] "
               "(Fang et al., USENIX Sec. 2020, 4.3)")
    supported_knowledge = ("omniscient",)
    #: b > 1: the crafted values lie in [w, b w]
    constraints: ClassVar[Constraints] = {"b": [Interval(Real, 1, None, closed="neither")]}

    def __init__(self, *, b: float = 2.0, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.b = float(b)

    def forge(self, ctx: Context) -> Tensor:
        honest, mean = finite_rows(self.name, ctx.need_honest().detach())
        direction = torch.sign(mean).to(ctx.dtype)
        low, high = torch.aminmax(honest.to(ctx.dtype), dim=0)
        extreme = torch.where(direction > 0, low, high)  # the value to go beyond
        side = direction * extreme
        # u in [1, b]: divide where that leaves the honest range (moving toward 0), multiply
        # where it does by growing; 0 where the direction or the extreme value is 0
        u = torch.rand((ctx.f, ctx.d), generator=ctx.generator, dtype=ctx.dtype,
                       device="cpu").to(extreme.device)
        u.mul_(self.b - 1.0).add_(1.0)
        rows = torch.where(side > 0, extreme / u, extreme * u)
        rows.masked_fill_(side == 0, 0.0)
        return rows if ctx.out is None else ctx.out.copy_(rows)
