"""The rule registry, the :class:`Rule` protocol and :class:`BoundRule`.

A rule is registered where it is defined, with :func:`register`; the package imports its own
modules at start-up, so adding a rule is one file (plus its tests) and a user's rule, in the
user's module, is registered the same way.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from byzsgd import kernels
from byzsgd.constraints import Constraint, validate

from ._base import Aggregation, _identity, as_gradients, as_matrix, check_f

if TYPE_CHECKING:
    from .distances import Geometry

F = TypeVar("F", bound=Callable[..., Any])

#: name -> RuleSpec.
_RULES: dict[str, RuleSpec] = {}


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule.

    ``function(gradients, f, **params)`` computes it on an (n, d) tensor and returns an
    :class:`Aggregation` (or a plain tensor, wrapped). ``requires(n, f, **params)`` raises
    ``ValueError`` when n and f (and parameters that depend on them) do not fit
    (``krum needs n >= 2f + 3, got n=6, f=2``); ``constraints`` declares each keyword
    parameter's accepted values (:mod:`byzsgd.constraints`). ``selection(geometry, f,
    **params)`` gives the selected rows from the pairwise geometry alone (distance-based
    selection rules), so that a caller who knows the geometry of an input without holding it
    (the leeway attacks' search) can ask the rule.
    """

    name: str
    summary: str
    function: Callable[..., Any]
    requires: Callable[..., None] | None = None
    selects_rows: bool = False
    selection: Callable[..., Tensor] | None = None
    constraints: Mapping[str, Sequence[Constraint]] = field(default_factory=dict)
    #: Where the rule was registered from (``module.qualname``), for clash messages.
    registrant: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraints", dict(self.constraints))
        object.__setattr__(self, "value", _value_of(self))

    # -- what the rule accepts ----------------------------------------------------------------
    #
    # Every rule also takes ``impl`` ("auto" | "torch" | "compiled", :mod:`byzsgd.kernels`):
    # which implementation of the kernels it runs on. It is declared here, not by each rule's
    # function, and the function never sees it (it runs inside ``kernels.use(impl)``).

    @property
    def params(self) -> dict[str, object]:
        """The rule's keyword parameters and their defaults (``inspect.Parameter.empty``
        when it has none)."""
        return {name: p.default for name, p in _signature(self.function).parameters.items()
                if name not in ("gradients", "f")
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    def _accepts_any(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD
                   for p in _signature(self.function).parameters.values())

    def validate(self, f: int, params: Mapping[str, object]) -> None:
        """Refuse unknown parameters, parameters outside their constraints and a bad ``f``
        (``ValueError``/``TypeError`` naming the rule and the parameter)."""
        check_f(self.name, 0, f)
        accepted = self.params
        if not self._accepts_any():
            unknown = sorted(set(params) - set(accepted) - {"impl"})
            if unknown:
                raise ValueError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                                 f"{self.name} accepts: {', '.join(sorted(accepted)) or 'none'}")
        validate(self.name, {"impl": kernels.IMPL_CONSTRAINT, **self.constraints}, params)

    def check(self, n: int, f: int, **params: object) -> None:
        """Validate a configuration before running it: unknown or invalid parameters and a
        violated precondition raise ``ValueError`` naming what to change."""
        self.validate(f, params)
        if self.requires is not None:
            self.requires(n, f, **self._for_requires(params))

    def _for_requires(self, params: Mapping[str, object]) -> dict[str, object]:
        """The given parameters over the defaults, restricted to what ``requires`` takes."""
        full = {k: v for k, v in self.params.items() if v is not inspect.Parameter.empty}
        full.update(params)
        full.pop("impl", None)
        assert self.requires is not None
        sig = _signature(self.requires)
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return full
        return {k: v for k, v in full.items() if k in sig.parameters and k not in ("n", "f")}

    # -- running it ---------------------------------------------------------------------------

    def select(self, gradients: Any, f: int, **params: object) -> Aggregation:
        """Check ``f`` and ``params``, then run the rule on ``gradients`` (an (n, d) tensor, a
        list of per-worker tensors or of per-worker dicts of tensors: the value comes back
        in the structure of one worker's input)."""
        matrix, back = as_matrix(gradients, self.name)
        x = as_gradients(matrix, self.name)
        self.check(x.shape[0], f, **params)
        return self._finish(self._call(x, f, params), back)

    def run(self, gradients: Any, f: int, params: Mapping[str, object]) -> Aggregation:
        """Run the rule without checking its parameters (they were checked when bound)."""
        matrix, back = as_matrix(gradients, self.name)
        return self._finish(self._call(as_gradients(matrix, self.name), f, params), back)

    def _call(self, x: Tensor, f: int, params: Mapping[str, object]) -> object:
        """The rule's function on ``x``, its kernels in the implementation ``params["impl"]``
        asks for (``"auto"`` when absent)."""
        if "impl" not in params:
            return self.function(x, f, **params)
        rest = {k: v for k, v in params.items() if k != "impl"}
        with kernels.use(str(params["impl"])):
            return self.function(x, f, **rest)

    def _finish(self, result: object, back: Callable[[Tensor], Any]) -> Aggregation:
        if not isinstance(result, Aggregation):
            if not isinstance(result, Tensor):
                raise TypeError(f"{self.name}: the rule returned {type(result).__name__}; a "
                                f"rule returns a Tensor (d,) or an Aggregation")
            result = Aggregation(result)
        if back is _identity:
            return result
        return Aggregation(back(result.value), result.selected)

    def __call__(self, gradients: Any, f: int, **params: object) -> Tensor:
        return self.select(gradients, f, **params).value


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def _value_of(spec: RuleSpec) -> Callable[..., Tensor]:
    """The rule as a plain function ``rule(gradients, f, **params) -> Tensor``."""

    def rule(gradients: Any, f: int, **params: object) -> Tensor:
        return spec.select(gradients, f, **params).value

    rule.__name__ = spec.name.replace("-", "_")
    rule.__qualname__ = rule.__name__
    rule.__module__ = "byzsgd.aggregators"
    rule.__doc__ = spec.function.__doc__
    rule.spec = spec  # type: ignore[attr-defined]
    return rule


def _registrant(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def register(name: str, *, summary: str = "", selects_rows: bool = False,
             selection: Callable[..., Tensor] | None = None,
             constraints: Mapping[str, Sequence[Constraint]] | None = None,
             requires: Callable[..., None] | None = None,
             replace: bool = False) -> Callable[[F], F]:
    """Register ``function(gradients, f, **params)`` as the aggregation rule ``name``.

    ``function`` receives an (n, d) float32/float64 CPU tensor and returns an
    :class:`Aggregation` or a (d,) tensor. ``summary`` is the one-line description that
    ``byzsgd list`` shows (default: the docstring's first line); ``selects_rows`` says the
    rule reports the rows it selected (``Aggregation.selected``); ``selection`` see
    :class:`RuleSpec`; ``constraints`` maps each keyword parameter to its accepted forms
    (:mod:`byzsgd.constraints`); ``requires(n, f, **params)`` checks the precondition on n
    and f. A name already registered from elsewhere raises ``ValueError`` naming both
    registrants, unless ``replace=True``. Returns ``function`` unchanged::

        @register("krum", summary="...", selects_rows=True, selection=krum_selection,
                  constraints={"p": [Interval(Real, 1, math.inf, closed="both")]},
                  requires=check_krum)
        def krum_select(gradients, f, *, p=2.0) -> Aggregation: ...
    """
    if not isinstance(name, str) or not name or name != name.strip() or " " in name:
        raise ValueError(f"a rule name must be a non-empty string without spaces, got {name!r}")

    def decorate(function: F) -> F:
        if not callable(function):
            raise TypeError(f"register({name!r}) decorates a function, got "
                            f"{type(function).__name__}")
        doc = (inspect.getdoc(function) or "").strip().splitlines()
        spec = RuleSpec(name=name, summary=summary or (doc[0] if doc else ""),
                        function=function, requires=requires, selects_rows=selects_rows,
                        selection=selection, constraints=constraints or {},
                        registrant=_registrant(function))
        unknown = sorted(set(spec.constraints) - set(spec.params))
        if unknown and not spec._accepts_any():
            raise ValueError(f"register({name!r}): constraints for parameter(s) "
                             f"{', '.join(unknown)} that {spec.registrant} does not take")
        old = _RULES.get(name)
        if old is not None and not replace and old.registrant != spec.registrant:
            raise ValueError(f"aggregation rule {name!r} is already registered by "
                             f"{old.registrant}; {spec.registrant} cannot take the name "
                             f"(choose another name, or pass replace=True)")
        _RULES[name] = spec
        package = sys.modules.get("byzsgd.aggregators")
        if package is not None and getattr(package, "_READY", False):
            setattr(package, spec.value.__name__, spec.value)
        return function

    return decorate


def names() -> list[str]:
    """Registered rule names, sorted."""
    return sorted(_RULES)


def spec(name: str) -> RuleSpec:
    """The registered rule ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown aggregation rule {name!r}; known rules: "
                         f"{', '.join(names())}") from None


def get(name: str) -> Callable[..., Tensor]:
    """The rule ``name`` as a function ``rule(gradients, f, **params) -> Tensor``."""
    return spec(name).value  # type: ignore[attr-defined, no-any-return]


def aggregate(name: str, gradients: Any, f: int, **params: object) -> Aggregation:
    """Run rule ``name`` and report which rows it selected (``None`` if it selects none)."""
    return spec(name).select(gradients, f, **params)


def check(name: str, n: int, f: int, **params: object) -> None:
    """Validate a configuration before running it: unknown rule, unknown or invalid
    parameter, or a violated precondition raise ``ValueError`` naming what to change."""
    spec(name).check(n, f, **params)


@runtime_checkable
class Rule(Protocol):
    """What the server (:class:`byzsgd.engine.server.Server`) and the adaptive attacks accept:
    a rule with its ``f`` and parameters fixed.

    Required: ``select(gradients) -> Aggregation`` on an (n, d) tensor, and the attributes
    ``name`` (for reports) and ``f``. Optional, read with a default when absent:
    ``selects_rows`` (``False``: the adaptive leeway attacks then refuse to search),
    ``p`` (the norm of a distance rule's geometry, ``2.0``) and ``selection(geometry)``
    (the rows the rule would select on an input of that pairwise geometry, or ``None``;
    absent: the attack runs the rule on the assembled input). :class:`BoundRule` is the
    library's implementation; :func:`bind` makes one from a registered name or from a plain
    function ``rule(gradients, f, **params) -> Tensor``.
    """

    name: str
    f: int

    def select(self, gradients: Tensor) -> Aggregation: ...


@dataclass(frozen=True)
class BoundRule:
    """A rule with its ``f`` and parameters fixed: what a server deploys, and what an
    adaptive attacker may query (El Mhamdi et al.'s attacker knows the rule). Holds the
    resolved :class:`RuleSpec` (a name given here is looked up once)."""

    spec: RuleSpec
    f: int
    params: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.spec, str):
            object.__setattr__(self, "spec", spec(self.spec))

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, gradients: Any) -> Tensor:
        return self.select(gradients).value

    def select(self, gradients: Any) -> Aggregation:
        return self.spec.run(gradients, self.f, self.params)

    @property
    def selects_rows(self) -> bool:
        return self.spec.selects_rows

    @property
    def p(self) -> float:
        """The norm of a distance-based rule's geometry (2 unless the rule takes ``p``)."""
        return float(self.params.get("p", 2.0))  # type: ignore[arg-type]

    def selection(self, geo: Geometry) -> Tensor | None:
        """The rows the rule would select on an input of geometry ``geo`` (computed in the
        norm :attr:`p`), or None when the rule cannot tell from the geometry alone."""
        fn = self.spec.selection
        if fn is None:
            return None
        params = {k: v for k, v in self.params.items() if k != "impl"}
        try:
            with kernels.use(str(self.params.get("impl", "auto"))):
                return fn(geo, self.f, **params)
        except ValueError:
            return None

    def check(self, n: int) -> None:
        self.spec.check(n, self.f, **self.params)


def bind(rule: str | Callable[..., Any], f: int, **params: object) -> BoundRule:
    """Fix a rule's ``f`` and parameters, checked now (``n`` is checked by ``check(n)``).

    ``rule`` is a registered name, or a plain function ``rule(gradients, f, **params)``
    returning a (d,) tensor or an :class:`Aggregation` (registered or not: an unregistered
    function is bound under its ``__name__``, with no declared constraints).
    """
    if isinstance(rule, str):
        resolved = spec(rule)
    elif isinstance(rule, RuleSpec):
        resolved = rule
    elif callable(rule):
        found = getattr(rule, "spec", None)
        if isinstance(found, RuleSpec):
            resolved = found
        else:
            resolved = next((s for s in _RULES.values() if s.function is rule), None) or \
                RuleSpec(name=getattr(rule, "__name__", type(rule).__name__),
                         summary="", function=rule, registrant=_registrant(rule))
    else:
        raise TypeError(f"bind needs a rule name or a function rule(gradients, f, **params), "
                        f"got {type(rule).__name__}")
    resolved.validate(f, params)
    return BoundRule(resolved, f, dict(params))
