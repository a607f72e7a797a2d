"""Robust aggregation rules: ``rule(gradients, f, **params) -> Tensor``.

``gradients`` is a float tensor of shape (n, d), one row per worker (or a list of n per-worker
tensors, or of n per-worker dicts ``{name: tensor}``: the result then has the structure of one
worker's input); ``f`` the number of Byzantine workers the rule must tolerate (q in Xie et
al.); the result has shape (d,). Look-up by name::

    >>> from byzsgd import aggregators
    >>> krum = aggregators.get("krum")
    >>> krum(gradients, f=2)                                 # doctest: +SKIP
    >>> aggregators.aggregate("krum", gradients, f=2).selected   # doctest: +SKIP

Every rule checks its precondition first and raises ``ValueError`` naming it
(``krum needs n >= 2f + 3, got n=6, f=2``), and its parameters against their declared
constraints (``geomed: max_iter must be an int in [1, inf), got 2.5``). Rules never modify
their input.

A rule is one module of this package that registers itself with :func:`register`; the
package imports every module at start-up, so there is no table to edit. A user's rule is
registered the same way from the user's module (see the README, "Library"), or bound without
registering (``bind(my_rule, f)``). ``bind(rule, f, pre=["nnm", ("bucketing", {"s": 2})])``
puts pre-aggregators (:mod:`.preaggregation`) before the rule and returns a :class:`Chain`
(:mod:`.chain`), which also holds the state of rules that have one (centered clipping).
:class:`Rule` is what the server and the adaptive attacks accept; :class:`BoundRule` the
library's implementation of it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from . import _registry
from ._base import Aggregation, require
from ._registry import (
    BoundRule,
    Rule,
    RuleSpec,
    aggregate,
    check,
    get,
    names,
    register,
    spec,
)
from .chain import Chain, bind, pre_aggregators
from .distances import Geometry
from .preaggregation import PRE_AGGREGATORS, pre_spec

__all__ = [
    "PRE_AGGREGATORS",
    "Aggregation",
    "BoundRule",
    "Chain",
    "Geometry",
    "Rule",
    "RuleSpec",
    "aggregate",
    "bind",
    "check",
    "get",
    "names",
    "pre_aggregators",
    "pre_spec",
    "register",
    "require",
    "spec",
]

# Every public module of the package registers its rules when imported.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

# Each rule as a function of this package (``aggregators.krum``, ``aggregators.trimmed_mean``);
# set after the imports above, which bind the module names (krum, geomed...) as attributes.
for _spec in _registry._RULES.values():
    globals()[_spec.value.__name__] = _spec.value  # type: ignore[attr-defined]
_READY = True


def __getattr__(name: str) -> Any:
    """Rules registered later (by a user's module) as attributes too."""
    for s in _registry._RULES.values():
        if s.value.__name__ == name:  # type: ignore[attr-defined]
            return s.value  # type: ignore[attr-defined]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
