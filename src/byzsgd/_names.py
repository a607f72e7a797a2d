"""A table of named things registered by decorators (models, data sets): the checks on a name
and its summary, the clash rule, and look-up with a message listing the known names.

Rules and attacks have registries of their own (:mod:`byzsgd.aggregators._registry`,
:mod:`byzsgd.attacks._registry`): they register functions and classes with declared parameter
constraints, which models and data sets do not have."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Spec(Protocol):
    name: str
    summary: str

    @property
    def origin(self) -> str: ...


S = TypeVar("S", bound=Spec)


def origin(function: object) -> str:
    """Where ``function`` is defined (``module.qualname``), for messages and records."""
    return (f"{getattr(function, '__module__', '?')}."
            f"{getattr(function, '__qualname__', repr(function))}")


class Registry(Generic[S]):
    """Specs by name, in registration order. ``kind`` names one entry in messages ("model",
    "data set"); ``package`` is the module users call ``register`` from ("models", "data")."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self.specs: dict[str, S] = {}
        #: name -> one-line summary (kept in step with :attr:`specs`).
        self.descriptions: dict[str, str] = {}

    def check_entry(self, name: object, summary: object) -> None:
        """``ValueError`` unless ``name`` is a non-empty string without surrounding spaces and
        ``summary`` one non-empty line."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.package}.register: name must be a non-empty string "
                             f"without surrounding spaces, got {name!r}")
        if not isinstance(summary, str) or not summary.strip() or "\n" in summary:
            raise ValueError(f"{self.package}.register({name!r}): summary must be one "
                             f"non-empty line, got {summary!r}")

    def check_callable(self, name: str, function: object, signature: str) -> None:
        """``TypeError`` unless the decorated ``function`` is callable (``signature`` says
        what it should be)."""
        if not callable(function):
            raise TypeError(f"{self.package}.register({name!r}) decorates a {signature}, "
                            f"got {function!r}")

    def add(self, spec: S, *, replace: bool) -> None:
        """Register ``spec``; a name already taken raises ``ValueError`` naming its
        registrant, unless ``replace``."""
        if spec.name in self.specs and not replace:
            raise ValueError(f"{self.kind} {spec.name!r} is already registered by "
                             f"{self.specs[spec.name].origin}; choose another name or pass "
                             f"replace=True")
        self.specs[spec.name] = spec
        self.descriptions[spec.name] = spec.summary

    def names(self) -> list[str]:
        return list(self.specs)

    def spec(self, name: str) -> S:
        if name not in self.specs:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.specs)}")
        return self.specs[name]

    def describe(self, name: str) -> str:
        return self.spec(name).summary

