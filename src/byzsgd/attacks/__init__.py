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

Invalid parameters raise ``ValueError`` naming the parameter and the constraint; each attack
declares them (``constraints``, :mod:`byzsgd.constraints`). An attack is a module of this
package whose classes register themselves with :func:`register`; the package imports every
module at start-up, so there is no table to edit, and a user's attack registers the same way.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import (
    KNOWLEDGE,
    Attack,
    BackdoorLoss,
    ClassicAttack,
    Context,
    DimensionalAttack,
)
from ._registry import names, register, spec

# Every public module of the package registers its attacks when imported.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

from .alie import Alie, AlieBackdoor, alie_z_max  # noqa: E402
from .dimensional import BitFlip, Gambler, flip_bits  # noqa: E402
from .ipm import InnerProductManipulation  # noqa: E402
from .leeway import Linf, LpCoordinate  # noqa: E402
from .simple import Gaussian, LabelFlip, Omniscient, SignFlip  # noqa: E402

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
    "register",
    "spec",
]


def defaults(name: str) -> dict[str, object]:
    """The parameters of attack ``name`` and their defaults."""
    return spec(name).defaults()


def describe(name: str) -> str:
    """A one-line description of attack ``name`` with its source."""
    return spec(name).summary


def get(name: str, **params: object) -> Attack:
    """A new instance of attack ``name`` configured with ``params``.

    Unknown names or parameters, and values outside the declared constraints, raise
    ``ValueError`` naming what is accepted.
    """
    attack = spec(name)
    accepted = attack.defaults()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {', '.join(unknown)}; {name} accepts: "
                         f"{', '.join(sorted(accepted)) or 'none'}")
    return attack(**params)
