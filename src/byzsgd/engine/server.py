"""The parameter server's step: aggregate the n received vectors, update the parameters.

Shared by the single-process simulator and the distributed runtime.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from byzsgd.aggregators import Rule


def learning_rate(lr: float, schedule: str, t: int, fading: float) -> float:
    """The step size of round t: constant, or the fading rate
    ``eta_0 * r / (t + r)`` of Hidden Vulnerability 5.1 (the paper's "epoch" is one step)."""
    if schedule == "constant":
        return lr
    if schedule == "fading":
        return lr * fading / (t + fading)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; use constant or fading")


def sgd_step(theta: Tensor, direction: Tensor, lr: float, buffer: Tensor | None, *,
             momentum: float = 0.0, weight_decay: float = 0.0) -> tuple[Tensor, Tensor | None]:
    """``(theta - lr * v, buffer)`` where v is ``direction + weight_decay * theta`` passed
    through heavy-ball momentum (torch.optim.SGD's convention, no dampening); the momentum
    ``buffer`` (None before the first step or without momentum) is updated in place."""
    g = direction + weight_decay * theta if weight_decay else direction
    if momentum:
        if buffer is None:
            buffer = g.clone()
        else:
            buffer.mul_(momentum).add_(g)
        g = buffer
    return theta - lr * g, buffer


@dataclass
class Aggregate:
    """What the server made of one round's vectors."""

    value: Tensor
    #: Rows selected by a selection-based rule, per shard (None for other rules).
    selected: list[Tensor] | None


class Server:
    """SGD with momentum and weight decay on a flat parameter vector, fed by a robust rule.

    With ``servers = S > 1`` the coordinates are split into S contiguous shards, each
    aggregated on its own by the same rule, as S parameter servers that do not talk to each
    other would (Generalized Byzantine-tolerant SGD 5.5): identical to one server for
    coordinate-wise rules, a different (per-shard) selection for Krum and the like.

    ``rule`` is any :class:`~byzsgd.aggregators.Rule` (``select(gradients) -> Aggregation``):
    a :class:`~byzsgd.aggregators.BoundRule` from ``aggregators.bind(name_or_function, f)``,
    or a :class:`~byzsgd.aggregators.Chain` (pre-aggregators, state): a rule with ``commit``
    is told each round's aggregate, and its ``state_dict`` travels in :meth:`rule_state`.
    """

    def __init__(self, rule: Rule, d: int, *, servers: int = 1, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        if not isinstance(rule, Rule):
            raise TypeError(f"Server needs a Rule (an object with select(gradients) -> "
                            f"Aggregation, name and f), got {type(rule).__name__}; bind a "
                            f"rule name or a function with aggregators.bind(rule, f)")
        if not 1 <= servers <= d:
            raise ValueError(f"servers must satisfy 1 <= servers <= d={d}, got {servers}")
        self.rule = rule
        self.d = d
        self.momentum = momentum
        self.weight_decay = weight_decay
        bounds = torch.linspace(0, d, servers + 1).round().long().tolist()
        self.shards = list(itertools.pairwise(bounds))
        self.buffer: Tensor | None = None

    def aggregate(self, vectors: Tensor) -> Aggregate:
        """Run the rule (with its pre-aggregation chain) on the received vectors; a rule
        with state (a ``Chain``: centered clipping's previous aggregate, the per-round
        generators of bucketing and DnC) then commits the round's aggregate."""
        commit = getattr(self.rule, "commit", None)
        if len(self.shards) == 1:
            result = self.rule.select(vectors)
            selected = None if result.selected is None else [result.selected]
            value = result.value
        else:
            if commit is not None:
                parts = [self.rule.select(vectors[:, a:b], columns=slice(a, b))
                         for a, b in self.shards]
            else:
                parts = [self.rule.select(vectors[:, a:b]) for a, b in self.shards]
            value = torch.cat([p.value for p in parts])
            selected = None if parts[0].selected is None else [p.selected for p in parts]
        if commit is not None:
            commit(value)
        return Aggregate(value, selected)

    def step(self, theta: Tensor, direction: Tensor, lr: float) -> Tensor:
        """:func:`sgd_step` with this server's momentum buffer."""
        theta, self.buffer = sgd_step(theta, direction, lr, self.buffer,
                                      momentum=self.momentum, weight_decay=self.weight_decay)
        return theta

    def state_dict(self) -> dict[str, Any]:
        """The momentum buffer and, for a rule with state, the rule's (``rule``)."""
        return {"buffer": self.buffer, **self.rule_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = state["buffer"]
        self.load_rule_state(state)

    def rule_state(self) -> dict[str, Any]:
        """``{"rule": ...}`` for a rule with state (a Chain), else ``{}``: what a checkpoint
        keeps of the rule (centered clipping's previous aggregate, the round counter that
        seeds bucketing and DnC)."""
        return {"rule": self.rule.state_dict()} if hasattr(self.rule, "state_dict") else {}

    def load_rule_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rule_state` returned (nothing when it holds no ``rule``)."""
        if "rule" in state and hasattr(self.rule, "load_state_dict"):
            self.rule.load_state_dict(state["rule"])
