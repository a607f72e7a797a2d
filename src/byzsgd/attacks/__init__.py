"""Attacks: functions of what the attacker knows that return only the Byzantine rows.

Look-up by name mirrors :mod:`byzsgd.aggregators`::

    >>> from byzsgd import attacks
    >>> attack = attacks.get("alie", z=1.0)
    >>> attack(honest=honest, own=own, f=2, n=10)              # doctest: +SKIP
    >>> attacks.names()                                        # doctest: +SKIP

An attack object exposes ``name``, ``knowledge`` (``"omniscient"``, ``"own"`` or ``"none"``:
what it reads), ``supported_knowledge``, ``dimensional`` and ``params``.

* Classic attacks (``dimensional = False``) are called with keywords ``honest=`` (h, d),
  ``own=`` (f, d), ``f=``, ``n=``, ``rule=`` (a ``BoundRule``), ``generator=`` and, for
  ``alie-backdoor``, ``backdoor_loss=``; they return a new (f, d) tensor in the dtype of
  ``honest``, and ignore keywords they do not need.
* Dimensional attacks (``bit-flip``, ``gambler``; Definition 4 of Generalized
  Byzantine-tolerant SGD) are called with ``gradients=`` (n, d) and ``generator=`` and
  return ``(corrupted, mask)``.

Invalid parameters raise ``ValueError`` naming the parameter and the constraint.
"""

from __future__ import annotations

import inspect

from ._base import (
    KNOWLEDGE,
    Attack,
    BackdoorLoss,
    ClassicAttack,
    Context,
    DimensionalAttack,
)
from .alie import Alie, AlieBackdoor, alie_z_max
from .dimensional import BitFlip, Gambler, flip_bits
from .ipm import InnerProductManipulation
from .leeway import Linf, LpCoordinate
from .simple import Gaussian, LabelFlip, Omniscient, SignFlip

__all__ = [
    "KNOWLEDGE",
    "Alie",
    "AlieBackdoor",
    "Attack",
    "BackdoorLoss",
    "BitFlip",
    "ClassicAttack",
    "Context",
    "DimensionalAttack",
    "Gambler",
    "Gaussian",
    "InnerProductManipulation",
    "LabelFlip",
    "Linf",
    "LpCoordinate",
    "Omniscient",
    "SignFlip",
    "alie_z_max",
    "defaults",
    "describe",
    "flip_bits",
    "get",
    "names",
]

_CLASSES: list[type[Attack]] = [
    Gaussian, Omniscient, SignFlip, LabelFlip, InnerProductManipulation, Alie, AlieBackdoor,
    LpCoordinate, Linf, BitFlip, Gambler,
]
_REGISTRY: dict[str, type[Attack]] = {c.name: c for c in _CLASSES}


def names() -> list[str]:
    """Registered attack names."""
    return list(_REGISTRY)


def _cls(name: str) -> type[Attack]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; known attacks: "
                         f"{', '.join(names())}") from None


def defaults(name: str) -> dict[str, object]:
    """The parameters of attack ``name`` and their defaults."""
    return {p.name: p.default
            for p in inspect.signature(_cls(name).__init__).parameters.values()
            if p.name != "self"}


def describe(name: str) -> str:
    """A one-line description of attack ``name`` with its source."""
    return _cls(name).summary


def get(name: str, **params: object) -> Attack:
    """A new instance of attack ``name`` configured with ``params``.

    Unknown names or parameters raise ``ValueError`` listing what is accepted.
    """
    cls = _cls(name)
    accepted = defaults(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {', '.join(unknown)}; {name} accepts: "
                         f"{', '.join(sorted(accepted)) or 'none'}")
    return cls(**params)  # type: ignore[arg-type]
