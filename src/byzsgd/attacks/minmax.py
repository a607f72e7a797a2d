"""Min-Max and Min-Sum, the AGR-agnostic attacks of Shejwalkar & Houmansadr, "Manipulating
the Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated Learning"
(NDSS 2021), Section IV, the AGR-agnostic attacks.

Every Byzantine worker sends ``B(gamma) = mean(benign) + gamma * p`` (eq. 5) with the
perturbation ``p`` one of

* ``"unit-vec"``, the inverse unit vector ``-mean / |mean|``,
* ``"sign"``, the inverse sign ``-sign(mean)``,
* ``"std"``, the inverse standard deviation ``-std`` (per coordinate, Bessel-corrected),

and gamma the largest for which B stays as close to the benign vectors as they are to one
another:

* Min-Max (eq. 6): ``max_i |B - x_i| <= max_{i,j} |x_i - x_j|``;
* Min-Sum (eq. 7): ``sum_i |B - x_i|^2 <= max_i sum_j |x_i - x_j|^2``.

(The authors' code compares Min-Sum's sum with the *least* benign sum, a stricter bound; the
paper's eq. 7 and this module take the largest.)

gamma is found by the paper's Algorithm 1: start at ``gamma_init``, step ``gamma_init / 2``;
each iteration moves gamma up by the step when the oracle accepts B(gamma) (remembering it as
``gamma_succ``), down otherwise, and halves the step, until ``|gamma_succ - gamma| <= tau``.
It explores (0, 2 gamma_init); both constraints are convex in gamma and hold at gamma = 0 (the
mean is no farther from the benign vectors than they are from each other), so the accepted
gammas form an interval from 0 and the search converges to its end, within tau, or to
2 gamma_init when the interval reaches beyond.

The oracle reads no (h, d) data: with ``u_i = x_i - mean``,
``|B - x_i|^2 = |u_i|^2 - 2 gamma u_i.p + gamma^2 |p|^2``, so one centred Gram matrix and one
product with p (O(h^2 d) once) answer every question in O(h).

The benign vectors are the honest gradients of the round (``knowledge="omniscient"``, the
paper's full-knowledge setting) or the Byzantine workers' own honestly computed ones
(``"own"``, its partial-knowledge setting). Benign rows with a NaN or Inf are ignored.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, ClassVar

import torch
from torch import Tensor

from byzsgd.constraints import Constraints, Interval, Options

from ._affine import AffineCandidates, finite_rows
from ._base import ClassicAttack, Context
from ._moments import mean_std
from ._registry import register

PERTURBATIONS = ("unit-vec", "sign", "std")


def perturbation(kind: str, benign: Tensor, mean: Tensor) -> Tensor:
    """The perturbation vector p (float64, (d,)) of Shejwalkar & Houmansadr, Section IV."""
    if kind == "unit-vec":
        norm = float(mean.norm())
        return -mean / norm if norm > 0 else torch.zeros_like(mean)
    if kind == "sign":
        return -torch.sign(mean)
    if kind == "std":
        return -mean_std(benign)[1].double()
    raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {kind!r}")


def gamma_search(accept: Any, gamma_init: float, tau: float) -> float:
    """Algorithm 1 of Shejwalkar & Houmansadr: the largest gamma ``accept(gamma)`` holds for
    (to within ``tau``), searched in (0, 2 gamma_init); 0 when none is found."""
    gamma, step, succ = gamma_init, gamma_init / 2.0, 0.0
    while abs(succ - gamma) > tau:
        if accept(gamma):
            succ = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2.0
    return succ


class _AgrAgnostic(ClassicAttack):
    supported_knowledge = ("omniscient", "own")
    constraints: ClassVar[Constraints] = {
        "perturbation": [Options(PERTURBATIONS)],
        "gamma_init": [Interval(Real, 0, None, closed="neither")],
        "tau": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, perturbation: str = "unit-vec", gamma_init: float = 10.0,
                 tau: float = 1e-5, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.perturbation = perturbation
        self.gamma_init = float(gamma_init)
        self.tau = float(tau)
        if self.tau >= self.gamma_init:
            raise ValueError(f"{self.name}: tau must be < gamma_init (the search stops once "
                             f"gamma moves by less than tau), got tau={tau}, "
                             f"gamma_init={gamma_init}")
        #: The gamma of the last call.
        self.last_gamma: float | None = None

    def __call__(self, **kwargs: Any) -> Tensor:
        self.last_gamma = None
        return super().__call__(**kwargs)

    def bound(self, geo: AffineCandidates) -> float:
        """The right-hand side of the constraint, from the benign vectors alone."""
        raise NotImplementedError

    def cost(self, geo: AffineCandidates, gamma: float) -> float:
        """The left-hand side of the constraint for B(gamma)."""
        raise NotImplementedError

    def forge(self, ctx: Context) -> Tensor:
        benign, mean = finite_rows(self.name, ctx.source(self.knowledge).detach())
        p = perturbation(self.perturbation, benign, mean)
        geo = AffineCandidates(benign, mean, p, ctx.f, center=mean)
        bound = self.bound(geo)

        def accept(gamma: float) -> bool:
            cost = self.cost(geo, gamma)
            return math.isfinite(cost) and cost <= bound

        self.last_gamma = gamma_search(accept, self.gamma_init, self.tau)
        return ctx.rows(mean + self.last_gamma * p)


@register
class MinMax(_AgrAgnostic):
    """Min-Max (Shejwalkar & Houmansadr, NDSS 2021, eq. 6 and Algorithm 1): ``mean + gamma p``
    with gamma the largest whose farthest benign vector is no farther than the two farthest
    benign vectors are from each other. Parameters: ``perturbation`` (``"unit-vec"``,
    ``"sign"``, ``"std"``), ``gamma_init`` (10, the authors' code), ``tau`` (1e-5, idem),
    ``knowledge``. ``last_gamma`` records the gamma found."""

    name = "min-max"
    summary = ("mean + gamma*p, max distance to benign within theirs (Shejwalkar & "
               "Houmansadr, NDSS 2021, eq. 6)")

    def bound(self, geo: AffineCandidates) -> float:
        return float(geo.benign_sq.max())

    def cost(self, geo: AffineCandidates, gamma: float) -> float:
        return float(geo.sq_to_benign(gamma).max())


@register
class MinSum(_AgrAgnostic):
    """Min-Sum (Shejwalkar & Houmansadr, NDSS 2021, eq. 7 and Algorithm 1): ``mean + gamma p``
    with gamma the largest whose sum of squared distances to the benign vectors is at most
    the largest such sum of a benign vector. Parameters as ``min-max``."""

    name = "min-sum"
    summary = ("mean + gamma*p, sum of squared distances within the benign max (Shejwalkar "
               "& Houmansadr, NDSS 2021, eq. 7)")

    def bound(self, geo: AffineCandidates) -> float:
        return float(geo.benign_sq.sum(dim=1).max())

    def cost(self, geo: AffineCandidates, gamma: float) -> float:
        return float(geo.sq_to_benign(gamma).sum())
