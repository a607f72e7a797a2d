"""The attack registry: ``@register`` on an :class:`~byzsgd.attacks.Attack` subclass, in the
module that defines it (the package imports its own modules at start-up)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar, overload

from ._base import Attack

A = TypeVar("A", bound=type[Attack])

#: name -> Attack subclass.
_ATTACKS: dict[str, type[Attack]] = {}

#: Names that mean something else in a configuration.
RESERVED = ("none",)


def _registrant(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@overload
def register(cls: A, *, replace: bool = False) -> A: ...
@overload
def register(cls: None = None, *, replace: bool = False) -> Callable[[A], A]: ...


def register(cls=None, *, replace=False):  # type: ignore[no-untyped-def]
    """Register an :class:`Attack` subclass under its class attribute ``name``.

    Use as ``@register`` or ``@register(replace=True)``. The class must set ``name`` (not
    ``"none"``), ``summary``, and ``constraints`` for its constructor parameters (keyword-only).
    A name already registered by another class raises ``ValueError`` naming both, unless
    ``replace=True``. Returns the class unchanged.
    """
    if cls is None:
        return lambda c: register(c, replace=replace)
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"attacks.register decorates an Attack subclass, got {cls!r}")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name or " " in name or name in RESERVED:
        raise ValueError(f"{_registrant(cls)}: an attack needs its own class attribute name, a "
                         f"non-empty string without spaces other than "
                         f"{', '.join(map(repr, RESERVED))}, got {name!r}")
    params = cls.defaults()
    unknown = sorted(set(cls.constraints) - set(params))
    if unknown:
        raise ValueError(f"{_registrant(cls)}: constraints for parameter(s) {', '.join(unknown)} "
                         f"that its constructor does not take")
    positional = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional:
        raise ValueError(f"{_registrant(cls)}: constructor parameters must be keyword-only, "
                         f"got {', '.join(positional)}")
    old = _ATTACKS.get(name)
    if old is not None and not replace and _registrant(old) != _registrant(cls):
        raise ValueError(f"attack {name!r} is already registered by {_registrant(old)}; "
                         f"{_registrant(cls)} cannot take the name (choose another name, or "
                         f"pass replace=True)")
    _ATTACKS[name] = cls
    return cls


def names() -> list[str]:
    """Registered attack names, sorted."""
    return sorted(_ATTACKS)


def spec(name: str) -> type[Attack]:
    """The attack class registered as ``name``; ``ValueError`` listing the known names."""
    try:
        return _ATTACKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attack {name!r}; known attacks: "
                         f"{', '.join(names())}") from None
