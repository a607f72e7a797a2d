"""Declared parameter constraints, checked by one validator (after scikit-learn's
``_param_validation``).

A rule or an attack declares, per keyword parameter, a list of accepted forms; a value is valid
when it satisfies any of them::

    >>> from numbers import Integral, Real
    >>> constraints = {"max_iter": [Interval(Integral, 1, None, closed="left")],
    ...                "tol": [Interval(Real, 0, None, closed="neither")],
    ...                "m": [Interval(Integral, 1, None, closed="left"), None]}
    >>> validate("geomed", constraints, {"max_iter": 2.5})
    Traceback (most recent call last):
    ...
    byzsgd.constraints.InvalidParameterError: geomed: max_iter must be an int in [1, inf), got 2.5

Forms: :class:`Interval` (ints or reals in a range; ``bool`` is never a number here, NaN is in
no interval), :class:`Options` (one of a fixed set of values), ``"boolean"`` (``True`` or
``False``), ``None`` (the value ``None``), a type (an instance of it), :class:`Items` (a
non-empty sequence whose items satisfy a form) and :class:`Satisfies` (a predicate with a
description). The error, :class:`InvalidParameterError`, is both a ``ValueError`` and a
``TypeError`` and names the owner, the parameter, the constraint and the value.

Conditions that tie a parameter to n and f (``krum needs n >= 2f + 3``) or to another parameter
are not constraints: the owner checks them (a rule's ``requires``, an attack's constructor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal

__all__ = [
    "Constraint",
    "Constraints",
    "Interval",
    "InvalidParameterError",
    "Items",
    "Options",
    "Satisfies",
    "describe",
    "is_valid",
    "validate",
]


class InvalidParameterError(ValueError, TypeError):
    """A parameter value that satisfies none of its declared constraints."""


@dataclass(frozen=True)
class Interval:
    """Numbers of ``type`` (``numbers.Integral`` or ``numbers.Real``) between ``low`` and
    ``high``. ``None`` bounds are unbounded and exclude the infinities; an infinite bound is
    included when ``closed`` says so (``Interval(Real, 1, math.inf, closed="both")`` is
    ``[1, inf]``, which contains ``inf``). ``bool`` and NaN are in no interval; a ``Real``
    interval accepts ints."""

    type: type
    low: float | None
    high: float | None
    closed: Literal["left", "right", "both", "neither"] = "both"

    def __post_init__(self) -> None:
        if self.type not in (Integral, Real):
            raise TypeError("Interval type must be numbers.Integral or numbers.Real")
        if self.closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"closed must be left, right, both or neither, got {self.closed!r}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"empty interval: low={self.low} > high={self.high}")

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.type):
            return False
        v = float(value)  # type: ignore[arg-type]
        if math.isnan(v):
            return False
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        left = self.closed in ("left", "both") and self.low is not None
        right = self.closed in ("right", "both") and self.high is not None
        above = v >= low if left else v > low
        below = v <= high if right else v < high
        return above and below

    def describe(self) -> str:
        kind = "an int" if self.type is Integral else "a float"
        lo = "-inf" if self.low is None else _num(self.low)
        hi = "inf" if self.high is None else _num(self.high)
        left = "[" if self.closed in ("left", "both") and self.low is not None else "("
        right = "]" if self.closed in ("right", "both") and self.high is not None else ")"
        return f"{kind} in {left}{lo}, {hi}{right}"


class Options:
    """One of a fixed set of values (compared with ``==``, never a bool for a number)."""

    def __init__(self, values: Iterable[object]) -> None:
        self.values = tuple(values)

    def accepts(self, value: object) -> bool:
        for v in self.values:
            if isinstance(value, bool) != isinstance(v, bool):
                continue  # True is not 1 here
            try:
                if value == v:
                    return True
            except (TypeError, ValueError):  # e.g. a tensor compared with a string
                continue
        return False

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def __repr__(self) -> str:
        return f"Options({self.values!r})"


@dataclass(frozen=True)
class Items:
    """A non-empty list or tuple whose every item satisfies ``each`` (and, with
    ``distinct``, no item repeats)."""

    each: Any
    distinct: bool = False

    def accepts(self, value: object) -> bool:
        if not isinstance(value, (list, tuple)) or not value:
            return False
        if not all(_accepts(self.each, v) for v in value):
            return False
        return not self.distinct or len(set(value)) == len(value)

    def describe(self) -> str:
        unique = "distinct " if self.distinct else ""
        return f"a non-empty list of {unique}items, each {describe([self.each])}"


@dataclass(frozen=True)
class Satisfies:
    """Any value for which ``predicate(value)`` is true; ``description`` completes
    "must be ..."."""

    predicate: Callable[[object], bool]
    description: str

    def accepts(self, value: object) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def describe(self) -> str:
        return self.description


#: One accepted form: an Interval, Options, Items, Satisfies, "boolean", None, or a type.
Constraint = Interval | Options | Items | Satisfies | str | None | type
#: A declaration: parameter name -> its accepted forms.
Constraints = dict[str, list[Constraint]]


def _num(x: float) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}" if isinstance(x, float) else str(x)


def _accepts(constraint: Constraint, value: object) -> bool:
    if constraint is None:
        return value is None
    if constraint == "boolean":
        return isinstance(value, bool)
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not (
            isinstance(value, bool) and constraint is not bool)
    if isinstance(constraint, str):
        raise TypeError(f"unknown constraint {constraint!r}")
    return constraint.accepts(value)


def _describe_one(constraint: Constraint) -> str:
    if constraint is None:
        return "None"
    if constraint == "boolean":
        return "a bool"
    if isinstance(constraint, type):
        return f"an instance of {constraint.__name__}"
    if isinstance(constraint, str):
        raise TypeError(f"unknown constraint {constraint!r}")
    return constraint.describe()


def describe(constraints: Sequence[Constraint]) -> str:
    """The accepted forms in words: ``"an int in [1, inf) or None"``."""
    parts = [_describe_one(c) for c in constraints if c is not None]
    if any(c is None for c in constraints):
        parts.append("None")
    return " or ".join(parts)


def is_valid(constraints: Sequence[Constraint], value: object) -> bool:
    """Whether ``value`` satisfies one of ``constraints``."""
    return any(_accepts(c, value) for c in constraints)


def validate(owner: str, constraints: Mapping[str, Sequence[Constraint]],
             params: Mapping[str, object]) -> None:
    """Check every parameter in ``params`` that has declared constraints; raise
    :class:`InvalidParameterError` ``"<owner>: <name> must be <constraint>, got <value>"``
    for the first that satisfies none. Parameters without constraints are not checked here
    (the owner's registry refuses unknown names)."""
    for name, value in params.items():
        accepted = constraints.get(name)
        if accepted is None or is_valid(accepted, value):
            continue
        raise InvalidParameterError(f"{owner}: {name} must be {describe(accepted)}, "
                                    f"got {value!r}")
