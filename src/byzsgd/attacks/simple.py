"""The baseline attacks of Xie et al. (Generalized Byzantine-tolerant SGD, 5.2-5.3), sign
flipping, and the label-flipping data attack (Fall of Empires 6.4, after Yin et al.)."""

from __future__ import annotations

from numbers import Real
from typing import ClassVar

import torch
from torch import Tensor

from byzsgd.constraints import Constraints, Interval

from ._base import FINITE, ClassicAttack, Context, check_int
from ._registry import register


@register
class Gaussian(ClassicAttack):
    """Gaussian attack (Generalized Byzantine-tolerant SGD, 5.2): every Byzantine row is an
    independent draw of N(mean, sigma^2 I), sigma = 200 in the paper. Reads nothing but the
    dimension; draws from ``generator``."""

    name = "gaussian"
    summary = "i.i.d. N(mean, sigma^2) rows, sigma=200 (Xie et al., Generalized 5.2)"
    supported_knowledge = ("none",)
    constraints: ClassVar[Constraints] = {
        "sigma": [Interval(Real, 0, None, closed="left")],
        "mean": FINITE,
    }

    def __init__(self, *, sigma: float = 200.0, mean: float = 0.0,
                 knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.sigma = float(sigma)
        self.mean = float(mean)

    def forge(self, ctx: Context) -> Tensor:
        noise = torch.randn((ctx.f, ctx.d), generator=ctx.generator, dtype=torch.float64,
                            device="cpu")
        # In place (the same floats as noise * sigma + mean): two fewer (f, d) float64 passes.
        return noise.mul_(self.sigma).add_(self.mean).to(device=ctx.device, dtype=ctx.dtype)


@register
class Omniscient(ClassicAttack):
    """Omniscient attack (Generalized Byzantine-tolerant SGD, 5.3): every Byzantine row is
    the negative sum of the correct gradients scaled by a large constant (1e20 in the paper):
    ``-scale * sum(honest)``."""

    name = "omniscient"
    summary = "-scale * sum(honest), scale=1e20 (Xie et al., Generalized 5.3)"
    supported_knowledge = ("omniscient",)
    constraints: ClassVar[Constraints] = {"scale": FINITE}

    def __init__(self, *, scale: float = 1e20, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.scale = float(scale)

    def forge(self, ctx: Context) -> Tensor:
        honest = ctx.need_honest()
        return ctx.rows(honest.sum(dim=0) * -self.scale)


@register
class SignFlip(ClassicAttack):
    """Sign flipping: each Byzantine worker sends its own honestly computed gradient,
    negated and scaled: row i is ``-scale * own[i]``."""

    name = "sign-flip"
    summary = "-scale * own (each Byzantine worker flips its own gradient), scale=1"
    supported_knowledge = ("own",)
    constraints: ClassVar[Constraints] = {"scale": FINITE}

    def __init__(self, *, scale: float = 1.0, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.scale = float(scale)

    def forge(self, ctx: Context) -> Tensor:
        return (ctx.need_own() * -self.scale).to(ctx.dtype)


@register
class LabelFlip(ClassicAttack):
    """Label flipping, a data attack (Fall of Empires 6.4, the attack of Yin et al.): the
    Byzantine workers compute honest gradients on training labels mapped by
    :meth:`label_map` (y -> num_classes - 1 - y, i.e. 9 - y on MNIST).

    The engine computes ``own`` on the flipped labels; the attack itself returns a copy of
    ``own``."""

    name = "label-flip"
    summary = "gradients computed on labels y -> C - 1 - y (Yin et al.; Fall of Empires 6.4)"
    supported_knowledge = ("own",)

    def __init__(self, *, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)

    @staticmethod
    def label_map(y: Tensor, num_classes: int) -> Tensor:
        """The flipped labels ``num_classes - 1 - y`` (a new tensor of y's dtype)."""
        num_classes = check_int("label-flip", "num_classes", num_classes, minimum=1,
                                constraint="num_classes >= 1")
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() \
                or y.dtype == torch.bool:
            raise ValueError("label-flip: y must be an integer tensor of class labels")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"label-flip: labels must satisfy 0 <= y < num_classes="
                             f"{num_classes}, got range [{int(y.min())}, {int(y.max())}]")
        return (num_classes - 1) - y

    def forge(self, ctx: Context) -> Tensor:
        return ctx.need_own().to(ctx.dtype, copy=True)
