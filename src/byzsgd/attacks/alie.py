"""A Little Is Enough (Baruch et al., 2019): shift every coordinate by z standard deviations
(Section 3.1-3.3, Algorithm 3), or optimize a backdoor inside that range (3.4, Algorithm 4).

mu and sigma are estimated per coordinate from the gradients the attack reads: by default the
f gradients the Byzantine workers computed honestly (``own``, Algorithm 3 line 1), or the
honest gradients of the round with ``knowledge="omniscient"``. sigma is the sample standard
deviation with Bessel's correction (an estimate of the population's sigma from few samples);
with a single sample (f = 1, or one honest row) it is taken to be 0, so the attack then sends
mu, its only sample, unchanged.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from statistics import NormalDist
from typing import ClassVar

import torch
from torch import Tensor

from byzsgd.constraints import Constraints, Interval, Options

from ._base import FINITE, BackdoorLoss, ClassicAttack, Context, check_int
from ._moments import mean_std
from ._registry import register


def alie_z_max(n: int, f: int) -> float:
    """The largest shift, in standard deviations, that stays the median with high
    probability (A Little Is Enough, 3.1 and Algorithm 3 lines 2-3).

    ``s = floor(n/2 + 1) - f`` correct workers must be "seduced" for the f attackers to hold
    a majority, and ``z_max = max{z : Phi(z) < (n - s)/n}``, computed as ``Phi^{-1}((n - s)/n)``
    (the supremum). ``alie_z_max(50, 24)`` is 1.7507 (the paper's 1.75);
    ``alie_z_max(51, 12)`` (the paper's experimental setting, s = 14) is 0.598.

    Raises ``ValueError`` unless ``0 <= f <= n``, when ``s <= 0`` (the attackers already hold
    a majority: they set the median themselves and no z bound applies; choose z explicitly),
    and when ``(n - s)/n = 0`` (n <= 2 and f = 0: no z has Phi(z) < 0).
    """
    n = check_int("alie", "n", n, minimum=1, constraint="n >= 1")
    f = check_int("alie", "f", f, minimum=0, maximum=n, constraint="0 <= f <= n")
    s = math.floor(n / 2 + 1) - f
    if s <= 0:
        raise ValueError(f"alie: z_max needs s = floor(n/2 + 1) - f > 0, i.e. f <= "
                         f"{math.floor(n / 2)} (a minority to seduce correct workers), got "
                         f"n={n}, f={f} (s={s}: the attackers already hold a majority); "
                         f"pass z explicitly")
    p = (n - s) / n
    if p <= 0:
        raise ValueError(f"alie: z_max undefined for n={n}, f={f}: s={s} leaves "
                         f"(n - s)/n = 0 and no z has Phi(z) < 0")
    return NormalDist().inv_cdf(p)


class _AlieBase(ClassicAttack):
    supported_knowledge = ("own", "omniscient")

    def __init__(self, *, z: float | None, knowledge: str | None) -> None:
        super().__init__(knowledge=knowledge)
        self.z = None if z is None else float(z)

    def z_for(self, ctx: Context) -> float:
        """The given z, or z_max(n, f)."""
        if self.z is not None:
            return self.z
        return alie_z_max(ctx.need_n(), ctx.f)


@register
class Alie(_AlieBase):
    """Convergence prevention (A Little Is Enough, Algorithm 3): every Byzantine worker sends
    ``mu + z * sigma`` (per coordinate). ``z`` defaults to :func:`alie_z_max` (n, f); pass it
    explicitly when the attackers hold a majority (the paper's Table 1 shifts all workers,
    f = n, with z in {0.5, 1, 1.5}) or to use the experiments' z = 1.5 (MNIST), 1 (CIFAR10).
    """

    name = "alie"
    summary = "mu + z*sigma per coordinate, z = z_max(n, f) (Baruch et al., Algorithm 3)"
    constraints: ClassVar[Constraints] = {"z": [*FINITE, None]}

    def __init__(self, *, z: float | None = None, knowledge: str | None = None) -> None:
        super().__init__(z=z, knowledge=knowledge)

    def forge(self, ctx: Context) -> Tensor:
        z = self.z_for(ctx)
        mu, sigma = mean_std(ctx.source(self.knowledge))
        return ctx.rows(mu + z * sigma)


@register
class AlieBackdoor(_AlieBase):
    """Backdoor attack (A Little Is Enough, 3.4 and Algorithm 4).

    Starting from v = mu, train v on

        Loss(v) = alpha * l_backdoor(v) + (1 - alpha) * l_delta(v),             (eq. 3)
        l_delta(v) = sum_j ((v_j - mu_j) / max(z * sigma_j, 1e-5))^2,           (eq. 4)

    then clamp each coordinate to ``mu_j +/- z * sigma_j`` and send that vector from every
    Byzantine worker. ``l_backdoor`` is the engine's ``backdoor_loss`` keyword: a
    differentiable function of the candidate vector v (d,) returning the scalar loss (cross
    entropy on the backdoor samples with the attacker's targets, for the model v produces).

    How "train" is read (``method``):

    * ``"sgd"`` (default), the paper's procedure taken literally: ``steps`` steps of plain
      gradient descent on v with learning rate ``lr``, then the clamp. The penalty's
      curvature 2 (1 - alpha) / (z sigma_j)^2 is huge for gradient-sized sigma (1e-3 gives
      4e7 at z = 0.2), so from the second step on every coordinate's offset v_j - mu_j is
      multiplied by 1 - lr * 2 (1 - alpha) / (z sigma_j)^2, a large negative factor: the
      offsets explode while keeping, after an odd number of flips, the reverse and, after an
      even number, the same sign as the first step -alpha * lr * dl_backdoor/dv_j. The clamp
      then puts every coordinate on the edge of its range. With the paper's 5 steps (4 flips)
      this is the *edge push*: ``v = mu - z sigma * sign(dl_backdoor/dv at mu)``, which is
      computed here directly (one gradient of l_backdoor, no overflowing iterates). It is what
      plants the backdoor (REPRODUCTION.md, Tables 2-3). With an odd ``steps`` the push is
      reversed, as the literal procedure's would be; coordinates with
      lr * 2 (1 - alpha) / max(z sigma_j, 1e-5)^2 < 2 (no flip: sigma_j above about
      sqrt(lr * (1 - alpha)) / z) follow the literal iteration's geometric sum instead.
    * ``"minimize"``: the minimizer of eq. 3, found by descent on the normalized coordinates
      u = (v - mu) / max(z sigma, 1e-5), where l_delta = |u|^2 and ``lr = 0.5`` contracts the
      penalty by alpha per step. Its backdoor loss is at most that of mu, but the penalty's d
      terms outweigh a cross entropy of a few nats, so v stays within ~1e-6 sigma of mu: with
      the paper's alpha = z = 0.2 this plants nothing (measured: 0% success on MNIST).

    Defaults follow the paper's backdoor experiments (4.2): alpha = z = 0.2 and 5 training
    rounds, lr 0.1 (the training rate). Note that z defaults to 0.2 there, not to z_max (pass
    ``z=None`` for z_max(n, f)).
    """

    name = "alie-backdoor"
    summary = ("optimize a backdoor within mu +/- z*sigma, alpha=z=0.2 (Baruch et al., "
               "Algorithm 4)")

    METHODS = ("sgd", "minimize")
    constraints: ClassVar[Constraints] = {
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "z": [Interval(Real, 0, None, closed="left"), None],  # the range is mu +/- z*sigma
        "steps": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither"), None],
        "method": [Options(METHODS)],
    }

    def __init__(self, *, alpha: float = 0.2, z: float | None = 0.2, steps: int = 5,
                 lr: float | None = None, method: str = "sgd",
                 knowledge: str | None = None) -> None:
        super().__init__(z=z, knowledge=knowledge)
        self.method = method
        if lr is None:
            lr = 0.1 if method == "sgd" else 0.5
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.lr = float(lr)

    def forge(self, ctx: Context) -> Tensor:
        loss_fn: BackdoorLoss | None = ctx.extra.get("backdoor_loss")
        if not callable(loss_fn):
            raise ValueError(f"{self.name}: needs backdoor_loss= (a differentiable function "
                             f"of a candidate vector (d,) returning the scalar backdoor loss)")
        z = self.z_for(ctx)
        if z < 0:
            raise ValueError(f"{self.name}: z must be >= 0, got z_max={z} for n={ctx.n}, "
                             f"f={ctx.f}; pass z explicitly")
        mu, sigma = mean_std(ctx.source(self.knowledge))
        bound = z * sigma
        scale = bound.clamp(min=1e-5)
        v = self._sgd(loss_fn, mu, scale) if self.method == "sgd" else self._minimize(
            loss_fn, mu, scale)
        return ctx.rows(torch.maximum(mu - bound, torch.minimum(v, mu + bound)))

    def _backdoor_loss(self, loss_fn: BackdoorLoss, v: Tensor) -> Tensor:
        """l_backdoor(v) as a 0-d tensor (under autograd when the caller enables it)."""
        loss = loss_fn(v)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"{self.name}: backdoor_loss must return a scalar tensor, got "
                             f"{type(loss).__name__}")
        return loss.reshape(())

    def _backdoor_grad(self, loss_fn: BackdoorLoss, v: Tensor) -> Tensor:
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._backdoor_loss(loss_fn, v), v)
        return grad

    def _sgd(self, loss_fn: BackdoorLoss, mu: Tensor, scale: Tensor) -> Tensor:
        """The literal procedure's clamped outcome (see the class docstring): per coordinate,
        offset_k+1 = offset_k * (1 - c) - alpha * lr * g with c = lr * 2 (1 - alpha) / scale^2
        and g the backdoor gradient at mu, summed in closed form over ``steps`` steps (g
        frozen at mu: the iterates leave the range after one step when c is large and the
        clamp keeps only the sign). Exploding offsets saturate to +/-inf, which the clamp maps
        to the range's edges."""
        if self.steps == 0:
            return mu
        g = self._backdoor_grad(loss_fn, mu).double()
        c = self.lr * 2.0 * (1.0 - self.alpha) / scale.double().square()
        factor = 1.0 - c
        # offset after k steps: -alpha lr g * (1 + factor + ... + factor^(k-1))
        geometric = torch.where(factor == 1.0, torch.full_like(factor, float(self.steps)),
                                (1.0 - factor.pow(self.steps)) / (1.0 - factor))
        offset = -self.alpha * self.lr * g * geometric
        offset = torch.nan_to_num(offset, nan=0.0)  # g_j = 0 with an infinite sum: no push
        return mu + offset.to(mu.dtype)

    def _minimize(self, loss_fn: BackdoorLoss, mu: Tensor, scale: Tensor) -> Tensor:
        u = torch.zeros_like(mu, requires_grad=True)
        with torch.enable_grad():
            optimizer = torch.optim.SGD([u], lr=self.lr)
            for _ in range(self.steps):
                optimizer.zero_grad()
                backdoor = self._backdoor_loss(loss_fn, mu + scale * u)
                loss = self.alpha * backdoor + (1 - self.alpha) * u.square().sum()
                loss.backward()
                optimizer.step()
        return mu + scale * u.detach()
