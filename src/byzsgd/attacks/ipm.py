"""Inner product manipulation (Xie et al., Fall of Empires, Sections 5-6)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from byzsgd.constraints import Constraints

from ._base import FINITE, ClassicAttack, Context
from ._registry import register


@register
class InnerProductManipulation(ClassicAttack):
    """Every Byzantine worker sends ``-epsilon * mean(honest)``.

    Fall of Empires 6.2-6.3: ``u_1 = ... = u_q = -(epsilon / (m - q)) * sum_i v_i`` over the
    m - q correct gradients (Remarks 3 and 5). A small positive epsilon (0.1, 0.5) defeats
    Krum (Theorem 2); a large one (10) defeats the coordinate-wise median (Theorem 1);
    negative epsilon is allowed (the paper's epsilon = -10, which Median withstands).

    ``knowledge="own"`` (not in the paper, whose attacker is omniscient, Remark 4) uses the
    mean of the attackers' own honestly computed gradients instead: an unbiased estimate of
    the same expectation (the argument of Hidden Vulnerability 3.2, last paragraph).
    """

    name = "ipm"
    summary = "-epsilon * mean(honest), epsilon=0.1 (Xie et al., Fall of Empires 6.2-6.3)"
    supported_knowledge = ("omniscient", "own")
    constraints: ClassVar[Constraints] = {"epsilon": FINITE}

    def __init__(self, *, epsilon: float = 0.1, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.epsilon = float(epsilon)

    def forge(self, ctx: Context) -> Tensor:
        return ctx.rows(-self.epsilon * ctx.source(self.knowledge).mean(dim=0))
