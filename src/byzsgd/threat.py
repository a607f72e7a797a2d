"""Threat model: who is Byzantine, when, and what the attackers know.

Definition 1 of Fall of Empires (classic model): q = f of the n workers send arbitrary
vectors, and "the indices of faulty workers can change across different iterations" (the
experiments of Fall of Empires 6.2-6.3 draw them at random each round: ``selection="random"``;
``"fixed"`` makes the last f workers Byzantine in every round). Definition 4 of Generalized
Byzantine-tolerant SGD (``model="generalized"``): any f of the n values of each coordinate may
be Byzantine; no worker is Byzantine as a whole, so :meth:`ThreatModel.byzantine_rows` is empty
and a dimensional attack corrupts values of the received matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from byzsgd.attacks import Attack

SELECTIONS = ("random", "fixed")
KNOWLEDGE = ("own", "omniscient")
MODELS = ("classic", "generalized")


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"threat model: {name} must be an int, got {value!r}")
    return value


@dataclass(frozen=True)
class ThreatModel:
    """n workers, f of them Byzantine (in the generalized model: f Byzantine values per
    coordinate), active in rounds ``[start_round, stop_round)`` (``stop_round=None``: to the
    end). ``knowledge`` overrides the attack's default (``None`` keeps it)."""

    n: int
    f: int
    selection: str = "random"
    knowledge: str | None = None
    model: str = "classic"
    start_round: int = 0
    stop_round: int | None = None

    def __post_init__(self) -> None:
        if _int("n", self.n) < 1:
            raise ValueError(f"threat model: n must be >= 1, got n={self.n}")
        if not 0 <= _int("f", self.f) <= self.n:
            raise ValueError(f"threat model: f must satisfy 0 <= f <= n, got n={self.n}, "
                             f"f={self.f}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"threat model: selection must be one of {', '.join(SELECTIONS)},"
                             f" got {self.selection!r}")
        if self.knowledge is not None and self.knowledge not in KNOWLEDGE:
            raise ValueError(f"threat model: knowledge must be one of {', '.join(KNOWLEDGE)} "
                             f"or None (the attack's default), got {self.knowledge!r}")
        if self.model not in MODELS:
            raise ValueError(f"threat model: model must be one of {', '.join(MODELS)}, got "
                             f"{self.model!r}")
        if _int("start_round", self.start_round) < 0:
            raise ValueError(f"threat model: start_round must be >= 0, got "
                             f"{self.start_round}")
        if self.stop_round is not None and _int("stop_round", self.stop_round) \
                < self.start_round:
            raise ValueError(f"threat model: stop_round must be >= start_round, got "
                             f"start_round={self.start_round}, stop_round={self.stop_round}")

    @property
    def h(self) -> int:
        """Correct workers in the classic model: n - f."""
        return self.n - self.f

    def active(self, round: int) -> bool:
        """Whether the attack runs in ``round`` (0-based): start_round <= round < stop_round."""
        return self.start_round <= round and (self.stop_round is None
                                              or round < self.stop_round)

    def byzantine_rows(self, round: int, generator: torch.Generator | None = None) -> Tensor:
        """Sorted int64 indices of this round's Byzantine workers, on the CPU (what a
        ``generator``, a CPU one, draws; the same on every device).

        ``"random"``: f distinct workers drawn uniformly from ``generator``; ``"fixed"``: the
        last f. Empty (and nothing drawn) outside the attack window, when f = 0, and in the
        generalized model (no whole worker is Byzantine there).
        """
        if self.f == 0 or self.model == "generalized" or not self.active(round):
            return torch.empty(0, dtype=torch.long, device="cpu")
        if self.selection == "fixed":
            return torch.arange(self.n - self.f, self.n, device="cpu")
        drawn = torch.randperm(self.n, generator=generator, device="cpu")
        return torch.sort(drawn[: self.f]).values

    def check_attack(self, attack: Attack) -> None:
        """``ValueError`` if ``attack`` does not fit this model (a dimensional attack needs
        ``model="generalized"`` and a classic one ``"classic"``) or cannot use the requested
        ``knowledge``."""
        if attack.dimensional != (self.model == "generalized"):
            kind = "dimensional" if attack.dimensional else "classic"
            raise ValueError(f"threat model: attack {attack.name!r} is {kind}, it needs "
                             f"model={'generalized' if attack.dimensional else 'classic'!r}, "
                             f"got model={self.model!r}")
        if self.knowledge is not None and self.knowledge not in attack.supported_knowledge:
            raise ValueError(f"threat model: attack {attack.name!r} supports knowledge "
                             f"{', '.join(attack.supported_knowledge)}, got "
                             f"knowledge={self.knowledge!r}")
