"""What every attack shares: the two calling conventions, knowledge, and input validation.

Two threat models (Xie et al., Generalized Byzantine-tolerant SGD, Section 3):

* **classic** (Definition 1 of Fall of Empires): f whole rows are Byzantine. A
  :class:`ClassicAttack` is called with keywords ``honest=`` (the h correct gradients of this
  round, (h, d)), ``own=`` (the gradients the f Byzantine workers computed honestly, (f, d)),
  ``f=``, ``n=``, ``rule=`` (the deployed :class:`~byzsgd.aggregators.Rule`),
  ``generator=`` and, for backdoors, ``backdoor_loss=``; it returns a NEW (f, d) tensor of the
  Byzantine rows, in the dtype of ``honest`` (of ``own`` when ``honest`` is absent). It never
  changes its inputs. ``f = 0`` returns an empty (0, d) tensor.
* **generalized** (Definition 4 of Generalized Byzantine-tolerant SGD): individual values
  anywhere in the (n, d) matrix are corrupted. A :class:`DimensionalAttack` is called with
  ``gradients=`` (all n received vectors) and ``generator=``; it returns a pair
  ``(corrupted, mask)``: a NEW (n, d) tensor and the (n, d) bool mask of corrupted entries.

Both accept ``**context`` and ignore what they do not need, so an engine can pass the same
keywords to every attack.

``knowledge`` says what a classic attack reads by default: ``"omniscient"`` (the honest
gradients of the round, El Mhamdi et al. 2.2; Fall of Empires Remark 4), ``"own"`` (only its
own f honestly computed gradients, A Little Is Enough Algorithm 3 line 1) or ``"none"``.
Where the papers allow both, it is a constructor parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from byzsgd.constraints import Constraint, Interval, Options, validate

if TYPE_CHECKING:
    from byzsgd.aggregators import Rule

KNOWLEDGE = ("omniscient", "own", "none")


def check_int(attack: str, name: str, value: object, *, minimum: int | None = None,
              maximum: int | None = None, constraint: str | None = None) -> int:
    """``value`` as an int in [minimum, maximum]; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{attack}: {name} must be an int, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if constraint is None:
            lo = "" if minimum is None else f"{minimum} <= "
            hi = "" if maximum is None else f" <= {maximum}"
            constraint = f"{lo}{name}{hi}"
        raise ValueError(f"{attack}: {name} must satisfy {constraint}, got {name}={value}")
    return value


def check_float(attack: str, name: str, value: object, *, minimum: float | None = None,
                maximum: float | None = None, finite: bool = True,
                positive: bool = False) -> float:
    """``value`` as a float (ints accepted) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{attack}: {name} must be a number, got {value!r}")
    v = float(value)
    if finite and not (v == v and abs(v) != float("inf")):
        raise ValueError(f"{attack}: {name} must be finite, got {name}={value}")
    if positive and not v > 0:
        raise ValueError(f"{attack}: {name} must be > 0, got {name}={value}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{attack}: {name} must be >= {minimum}, got {name}={value}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{attack}: {name} must be <= {maximum}, got {name}={value}")
    return v


def _check_matrix(attack: str, name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{attack}: {name} must be a torch.Tensor of shape "
                         f"({'h' if name == 'honest' else 'f' if name == 'own' else 'n'}, d), "
                         f"got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{attack}: {name} must be a 2-D tensor (one row per worker), "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{attack}: {name} must be a floating tensor, got {x.dtype}")
    return x


@dataclass(frozen=True)
class Context:
    """The validated inputs of one call of a classic attack.

    ``n`` is the number of workers (given, or h + f when ``honest`` is given; ``None`` when
    neither), ``d`` the dimension, ``dtype`` that of the output. ``extra`` holds any other
    keyword the engine passed (``backdoor_loss``...).
    """

    attack: str
    f: int
    d: int
    dtype: torch.dtype
    n: int | None = None
    honest: Tensor | None = None
    own: Tensor | None = None
    rule: Rule | None = None
    generator: torch.Generator | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Where the caller wants the (f, d) rows written (None: a new tensor).
    out: Tensor | None = None

    @property
    def device(self) -> torch.device:
        """Where the rows are forged: the device of ``out``, ``honest`` or ``own`` (the
        first given), else the CPU. Random draws are made on the CPU, from ``generator``,
        and moved here."""
        for t in (self.out, self.honest, self.own):
            if t is not None:
                return t.device
        return torch.device("cpu")

    def need_honest(self, why: str = "") -> Tensor:
        if self.honest is None or self.honest.shape[0] == 0:
            raise ValueError(f"{self.attack}: needs honest= (the correct gradients of this "
                             f"round, at least one row){why}")
        return self.honest

    def need_own(self, why: str = "") -> Tensor:
        if self.own is None:
            raise ValueError(f"{self.attack}: needs own= (the f gradients the Byzantine "
                             f"workers computed honestly, shape (f, d)){why}")
        return self.own

    def source(self, knowledge: str) -> Tensor:
        """The gradients an attack with ``knowledge`` reads: ``honest`` or ``own``."""
        if knowledge == "omniscient":
            return self.need_honest(" (knowledge='omniscient')")
        return self.need_own(" (knowledge='own')")

    def need_n(self) -> int:
        if self.n is None:
            raise ValueError(f"{self.attack}: needs n= (the number of workers), or honest= "
                             f"so that n = h + f")
        return self.n

    def rows(self, vector: Tensor) -> Tensor:
        """``vector`` (d,) repeated as f identical Byzantine rows: a new (f, d) tensor, or
        ``out`` written."""
        repeated = vector.to(self.dtype).reshape(1, -1).expand(self.f, self.d)
        return repeated.clone() if self.out is None else self.out.copy_(repeated)


#: A finite real number (any sign).
FINITE: list[Constraint] = [Interval(Real, None, None, closed="neither")]


class Attack:
    """Base class of all attacks. Subclasses set the class attributes below.

    ``name`` is the registry name, ``summary`` a one-line description with its source,
    ``dimensional`` whether it follows the generalized (value-wise) model,
    ``supported_knowledge`` the knowledge settings it implements (the first is the default),
    ``constraints`` the accepted values of each constructor parameter
    (:mod:`byzsgd.constraints`; ``knowledge`` is declared here). Constructor parameters are
    keyword-only and checked against the constraints before ``__init__`` runs; conditions
    between parameters stay in ``__init__``.
    """

    name: ClassVar[str] = "attack"
    summary: ClassVar[str] = ""
    dimensional: ClassVar[bool] = False
    supported_knowledge: ClassVar[tuple[str, ...]] = ("none",)
    constraints: ClassVar[dict[str, list[Constraint]]] = {}

    def __new__(cls, *args: Any, **params: Any) -> Attack:
        if args:  # an unregistered subclass may take positional parameters
            try:
                named = inspect.signature(cls.__init__).bind_partial(None, *args, **params)
            except TypeError:
                named = None  # __init__ will say what is wrong
            if named is not None:
                params = dict(list(named.arguments.items())[1:])
        validate(cls.name, cls.parameter_constraints(), params)
        return super().__new__(cls)

    @classmethod
    def parameter_constraints(cls) -> dict[str, list[Constraint]]:
        """The declared constraints of every constructor parameter, ``knowledge`` included."""
        return {"knowledge": [Options(cls.supported_knowledge), None], **cls.constraints}

    @classmethod
    def defaults(cls) -> dict[str, object]:
        """The constructor parameters and their defaults."""
        return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    def __init__(self, *, knowledge: str | None = None) -> None:
        if knowledge is None:
            knowledge = self.supported_knowledge[0]
        if knowledge not in self.supported_knowledge:  # a subclass that skipped __new__
            raise ValueError(f"{self.name}: knowledge must be one of "
                             f"{', '.join(map(repr, self.supported_knowledge))}, "
                             f"got knowledge={knowledge!r}")
        self.knowledge: str = knowledge

    @property
    def params(self) -> dict[str, object]:
        """The constructor parameters of this instance (for reports and reproduction)."""
        out: dict[str, object] = {}
        for pname in inspect.signature(type(self).__init__).parameters:
            if pname != "self" and hasattr(self, pname):
                out[pname] = getattr(self, pname)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class ClassicAttack(Attack):
    """An attack in the classic model: returns the f Byzantine rows (see the module doc)."""

    def __call__(self, *, f: int, honest: Tensor | None = None, own: Tensor | None = None,
                 n: int | None = None, rule: Rule | None = None,
                 generator: torch.Generator | None = None, out: Tensor | None = None,
                 **context: Any) -> Tensor:
        """The (f, d) Byzantine rows; written into ``out`` (f, d) when given (it must not
        overlap ``honest`` or ``own``), which the simulator uses to forge them in place in
        the matrix the rule receives."""
        ctx = make_context(self.name, f=f, honest=honest, own=own, n=n, rule=rule,
                           generator=generator, extra=context)
        if out is not None:
            if out.shape != (ctx.f, ctx.d) or out.dtype != ctx.dtype:
                raise ValueError(f"{self.name}: out must be a ({ctx.f}, {ctx.d}) {ctx.dtype} "
                                 f"tensor, got {tuple(out.shape)} {out.dtype}")
            ctx = dataclasses.replace(ctx, out=out)
        if ctx.f == 0:
            return torch.empty((0, ctx.d), dtype=ctx.dtype, device=ctx.device) \
                if out is None else out
        with probing(rule):
            rows = self.forge(ctx)
        assert rows.shape == (ctx.f, ctx.d), (self.name, tuple(rows.shape))
        return rows if out is None or rows is out else out.copy_(rows)

    def forge(self, ctx: Context) -> Tensor:
        """The (f, d) Byzantine rows, f >= 1: a new tensor, or ``ctx.out`` written (what
        :meth:`Context.rows` does)."""
        raise NotImplementedError


@contextmanager
def probing(rule: object) -> Iterator[None]:
    """Query the deployed ``rule`` without side effects: an attack may call it many times
    a round (the optimal attacks up to ``evals`` times, Fang's and the leeway attacks'
    searches), and a rule with state across rounds (centered clipping's previous aggregate,
    a plugin's running estimate) must leave the round as a round without probing would. A
    rule that keeps state exposes ``state_dict()`` / ``load_state_dict()`` (as
    :class:`~byzsgd.aggregators.Chain` does; its ``select`` is already pure, the server's
    ``commit`` advancing it): the state is snapshot here and restored when the attack is
    done, whatever the probes did to it. A rule without them is taken to be stateless."""
    save = getattr(rule, "state_dict", None)
    load = getattr(rule, "load_state_dict", None)
    if not (callable(save) and callable(load)):
        yield
        return
    state = copy.deepcopy(save())
    try:
        yield
    finally:
        load(state)


def make_context(attack: str, *, f: object, honest: object = None, own: object = None,
                 n: object = None, rule: Rule | None = None,
                 generator: torch.Generator | None = None,
                 extra: dict[str, Any] | None = None) -> Context:
    """Validate the keywords of a classic attack call (shapes, f, n) into a :class:`Context`."""
    f = check_int(attack, "f", f, minimum=0, constraint="f >= 0")
    h_t = None if honest is None else _check_matrix(attack, "honest", honest)
    o_t = None if own is None else _check_matrix(attack, "own", own)
    if h_t is None and o_t is None:
        raise ValueError(f"{attack}: needs honest= (h, d) or own= (f, d) to know the "
                         f"dimension d")
    if o_t is not None and o_t.shape[0] != f:
        raise ValueError(f"{attack}: own must have f={f} rows (one per Byzantine worker), "
                         f"got shape {tuple(o_t.shape)}")
    if h_t is not None and o_t is not None and h_t.shape[1] != o_t.shape[1]:
        raise ValueError(f"{attack}: honest and own must have the same dimension d, got "
                         f"{tuple(h_t.shape)} and {tuple(o_t.shape)}")
    if n is not None:
        n = check_int(attack, "n", n, minimum=f, constraint="n >= f")
        if h_t is not None and h_t.shape[0] != n - f:
            raise ValueError(f"{attack}: honest must have n - f = {n - f} rows, got shape "
                             f"{tuple(h_t.shape)} (n={n}, f={f})")
    elif h_t is not None:
        n = h_t.shape[0] + f
    ref = h_t if h_t is not None else o_t
    assert ref is not None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{attack}: generator must be a torch.Generator, "
                         f"got {type(generator).__name__}")
    return Context(attack=attack, f=f, d=ref.shape[1], dtype=ref.dtype, n=n, honest=h_t,
                   own=o_t, rule=rule, generator=generator, extra=dict(extra or {}))


class DimensionalAttack(Attack):
    """An attack in the generalized model (Definition 4 of Generalized Byzantine-tolerant
    SGD): corrupts individual values of the (n, d) matrix of received vectors."""

    dimensional = True

    def __call__(self, *, gradients: Tensor, generator: torch.Generator | None = None,
                 **context: Any) -> tuple[Tensor, Tensor]:
        x = _check_matrix(self.name, "gradients", gradients)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"{self.name}: generator must be a torch.Generator, "
                             f"got {type(generator).__name__}")
        corrupted, mask = self.corrupt(x, generator)
        assert corrupted.shape == x.shape and mask.shape == x.shape and mask.dtype == torch.bool
        return corrupted, mask

    def corrupt(self, gradients: Tensor,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(corrupted copy, mask)``; must not write into ``gradients``."""
        raise NotImplementedError


#: A function mapping a candidate flat vector (d,) to the scalar backdoor loss.
BackdoorLoss = Callable[[Tensor], Tensor]
