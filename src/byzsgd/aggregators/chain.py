"""A rule with its pre-aggregation chain and its state: what a server deploys.

``aggregators.bind("krum", 5, pre=["nnm", ("bucketing", {"s": 2})])`` returns a
:class:`Chain`: the received (n, d) matrix goes through each pre-aggregator in order
(``preaggregation.py``), then the rule. It has the interface of ``BoundRule`` (``select``,
``__call__``, ``selects_rows``, ``p``, ``selection``, ``check``), so the server and the
adaptive attacks, which query the deployed rule, see the whole chain.

What f each stage gets. Every stage gets the run's f. NNM, clipping and ARC return n rows of
which at most f derive from a Byzantine vector in a way their analyses bound. Bucketing
returns ceil(n/s) buckets of which up to f may hold a Byzantine vector: the random
permutation can put each Byzantine vector in a different bucket, and Karimireddy, He, Jaggi
(ICLR 2022) account for exactly that (Theorem I: the fraction of Byzantine buckets is at most
delta * s, i.e. f of n/s; ceil(f/s) would only hold if the Byzantine vectors were bucketed
together). So the rule after bucketing is given f, and ``check(n)`` refuses a chain whose
rule cannot tolerate f of ceil(n/s) rows (Krum after bucketing with s = 2 needs
ceil(n/2) >= 2f + 3).

Clipping and ARC without a copy. Both are diagonal (output row i = ``s_i x_i``), so the chain
computes their factors s only (one read of x, ``clipping_factors`` / ``arc_factors``) and keeps
(x, s): the mean and the coordinate-wise order statistics read ``s_i x_i`` lazily
(``_diagonal.py``: one weighted pass; a multiply as the order-statistic kernel copies rows in,
the same floats); any other rule or stage gets ``s x`` written into :attr:`Chain.workspace`, a
buffer kept from round to round (no fresh pages). Factors that hostile rows make special (0
for a non-finite row, below float32's range for a float32-max one) are always written out,
with the clipping rules' own guarantees. ``fuse=False`` runs every stage as its public
function instead (a new matrix per stage): the reference the fused path is tested against,
bit for bit except the mean (a weighted sum, within float32 rounding).

What ``selected`` means. Clipping and ARC keep row i as (a scaled) input row i, so the
rows a selection rule picks still name input rows and are reported as such; after NNM or
bucketing a row mixes several inputs and ``selected`` is ``None``.

State. Centered clipping's previous aggregate and the round counter that seeds the random
stages (bucketing's permutation, DnC's coordinates) live in :attr:`Chain.state`:
``commit(value)`` (called by the server once per round with the aggregate it used) advances
it, ``state_dict()`` / ``load_state_dict()`` carry it through a checkpoint. ``select`` never
changes it, so an attacker that queries the rule during round t sees the chain as the server
will run it in round t, including that round's permutation (the attacker knows the server's
randomness: the worst case; pass ``generator=`` to ``select`` to model one that does not).
Whatever a rule's ``select`` does, an attack's probes are undone: the attacks snapshot a rule's
``state_dict()`` before they forge and restore it after (``byzsgd.attacks._base.probing``), so
a plugin rule that moves its state inside ``select`` is probed without side effects too. The
distributed servers keep the state per shard (each commits its shard's aggregate) and the
lead joins the centers into its checkpoint (``distributed/server.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from byzsgd.kernels import memory
from byzsgd.seeding import generator_for

from ._base import Aggregation, as_gradients
from ._diagonal import run_scaled
from ._norms import plain_factors, scaled_rows
from ._registry import BoundRule
from ._registry import bind as bind_rule
from .distances import Geometry
from .preaggregation import PRE_AGGREGATORS, pre_spec

#: Rules with state across rounds, and the keyword through which the chain feeds it.
STATEFUL = {"centered-clipping": "center"}
#: Rules that draw random numbers each round, through ``generator=``.
RANDOM = {"dnc", "signguard"}

Stage = tuple[str, dict[str, object]]
PreSpecLike = str | tuple[str, Mapping[str, object]] | Mapping[str, Mapping[str, object]]


def normalize_pre(pre: Iterable[PreSpecLike] | None) -> tuple[Stage, ...]:
    """``["nnm", ("bucketing", {"s": 2}), {"clipping": {"c": 1.0}}]`` as
    ``(("nnm", {}), ("bucketing", {"s": 2}), ("clipping", {"c": 1.0}))``, each name checked
    and each parameter checked against the pre-aggregator's signature."""
    if pre is None:
        return ()
    if isinstance(pre, str | Mapping):
        pre = [pre]  # type: ignore[list-item]
    stages: list[Stage] = []
    for item in pre:
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, Mapping) and len(item) == 1:
            name, params = next(iter(item.items()))
        elif isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str):
            name, params = item[0], item[1]
        else:
            raise ValueError(f"pre-aggregator must be a name, (name, params) or {{name: params}},"
                             f" got {item!r}")
        if not isinstance(params, Mapping):
            raise ValueError(f"pre-aggregator {name!r}: parameters must be a table, "
                             f"got {params!r}")
        spec = pre_spec(name)
        accepted = set(inspect.signature(spec.apply).parameters) - {"gradients", "f",
                                                                    "generator", "out"}
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise ValueError(f"{name}: unknown parameter(s) {', '.join(unknown)}; "
                             f"{name} accepts: {', '.join(sorted(accepted)) or 'none'}")
        stages.append((name, dict(params)))
    return tuple(stages)


def describe(stages: tuple[Stage, ...]) -> str:
    """``nnm -> bucketing(s=2)``."""
    return " -> ".join(name + (f"({', '.join(f'{k}={v}' for k, v in p.items())})" if p else "")
                       for name, p in stages)


@dataclass(eq=False)
class Chain:
    """A rule bound to f and parameters, with pre-aggregators before it and its state."""

    #: The registered rule (``aggregators.RuleSpec``: ``select``, ``check``, ``selects_rows``,
    #: ``selection``), passed in by ``aggregators.bind``.
    rule: Any
    f: int
    params: dict[str, object]
    pre: tuple[Stage, ...] = ()
    #: Seeds the per-round generators of the random stages (the run's seed).
    round_seed: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"round": 0, "center": None})
    #: Clipping and ARC as factors handed to the rule (module docstring); False: each stage
    #: writes its own new matrix.
    fuse: bool = True
    #: Where the chain writes ``s x`` when the rule cannot read it lazily; reused each round.
    workspace: memory.Workspace = field(default_factory=memory.Workspace, repr=False)

    @property
    def name(self) -> str:
        return str(self.rule.name)

    def __post_init__(self) -> None:
        reserved = {STATEFUL.get(self.name), "generator" if self.name in RANDOM else None}
        taken = sorted(k for k, v in self.params.items() if k in reserved and v is not None)
        if taken:
            raise ValueError(f"{self.name}: {', '.join(taken)} is set by the bound rule "
                             f"(its state or per-round randomness), not a parameter")

    # -- the BoundRule interface -------------------------------------------------------------

    def __call__(self, gradients: Tensor) -> Tensor:
        return self.select(gradients).value

    def generator(self, stage: int) -> torch.Generator:
        """The generator of stage ``stage`` (pre-aggregators first, then the rule) in the
        current round."""
        return generator_for(self.round_seed, f"aggregation/{stage}", int(self.state["round"]))

    def select(self, gradients: Tensor, *, columns: slice | None = None,
               generator: torch.Generator | None = None) -> Aggregation:
        """Run the chain on ``gradients`` (n, d) with the current state (unchanged).
        ``columns``: which coordinates of the full vector these are (a server shard), so a
        stateful rule reads the matching part of its state. ``generator``: draw the random
        stages from it instead of the round's own generators."""
        x = gradients
        rows: Tensor | None = torch.arange(gradients.shape[0])
        scales: Tensor | None = None  # pending factors of a diagonal stage: the rows are s_i x_i
        for k, (name, params) in enumerate(self.pre):
            spec = pre_spec(name)
            if scales is not None:
                x, scales = self._materialize(x, scales), None
            if self.fuse and spec.factors is not None:
                x = as_gradients(x, name)
                scales = spec.factors(x, self.f, **params)
                if bool((scales == 1.0).all()):  # nothing clipped: the rows are x's
                    scales = None
                continue
            extra = {"generator": generator or self.generator(k)} if spec.random else {}
            x = spec.apply(x, self.f, **params, **extra)
            if not spec.keeps_rows:
                rows = None
        params = dict(self.params)
        if self.name in STATEFUL and self.state["center"] is not None:
            center = self.state["center"]
            params[STATEFUL[self.name]] = center if columns is None else center[columns]
        if self.name in RANDOM:
            params["generator"] = generator or self.generator(len(self.pre))
        result = None
        if scales is not None and plain_factors(scales):
            # the rule's own function (which checks its precondition) is bypassed: check here
            self._check_rule(x.shape[0])
            result = run_scaled(self.rule.function, x, scales, self.f, params)
        if result is None:
            if scales is not None:
                x = self._materialize(x, scales)
            result = self.rule.run(x, self.f, params)
        if self.workspace.holds(result.value):  # the next round overwrites the workspace
            result = Aggregation(result.value.clone(), result.selected)
        selected = result.selected
        if selected is not None and rows is not None:
            selected = torch.sort(rows[selected]).values
        elif self.pre and not all(pre_spec(n).keeps_rows for n, _ in self.pre):
            selected = None
        return Aggregation(result.value, selected)

    def _materialize(self, x: Tensor, scales: Tensor) -> Tensor:
        """``x_i * scales_i`` written into the workspace (in place when ``x`` is already
        there), with the clipping rules' guarantees (``_norms.scaled_rows``)."""
        return scaled_rows(x, scales, self.workspace.get(tuple(x.shape), x.dtype, x.device))

    @property
    def selects_rows(self) -> bool:
        return bool(self.rule.selects_rows) and all(pre_spec(n).keeps_rows for n, _ in self.pre)

    @property
    def p(self) -> float:
        """The norm of a distance-based rule's geometry (2 unless the rule takes ``p``)."""
        return float(self.params.get("p", 2.0))  # type: ignore[arg-type]

    def selection(self, geo: Geometry) -> Tensor | None:
        """The rows the rule would select on an input of geometry ``geo``; None when the
        chain has pre-aggregators (they change the geometry) or the rule cannot tell."""
        fn = self.rule.selection
        if fn is None or self.pre:
            return None
        try:
            return fn(geo, self.f, **self.params)
        except ValueError:
            return None

    def check(self, n: int) -> None:
        """Validate the chain for n workers: each stage's precondition on the rows it
        receives, then the rule's on the rows the last stage returns."""
        rows = n
        for name, params in self.pre:
            spec = pre_spec(name)
            spec.check(rows, self.f, **params)
            rows = spec.rows_out(rows, **params)
        try:
            self._check_rule(rows)
        except ValueError as e:
            if rows == n:
                raise
            raise ValueError(f"after {describe(self.pre)} the rule sees n'={rows} rows of which"
                             f" up to f={self.f} may hold a Byzantine vector: {e}") from None

    def _check_rule(self, n: int) -> None:
        self.rule.check(n, self.f, **self.params)

    # -- state ---------------------------------------------------------------------------------

    @property
    def stateful(self) -> bool:
        return self.name in STATEFUL or self.name in RANDOM or any(
            pre_spec(n).random for n, _ in self.pre)

    def commit(self, value: Tensor) -> None:
        """End of a round: ``value`` is the aggregate the server used (all d coordinates).
        Centered clipping centers the next round on it; the random stages move to the next
        round's generators."""
        if self.name in STATEFUL:
            self.state["center"] = value.detach().clone()
        self.state["round"] = int(self.state["round"]) + 1

    def state_dict(self) -> dict[str, Any]:
        center = self.state["center"]
        return {"round": int(self.state["round"]),
                "center": None if center is None else center.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = {"round": int(state["round"]), "center": state["center"]}

    def __repr__(self) -> str:
        chain = describe(self.pre) + " -> " if self.pre else ""
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"Chain({chain}{self.name}(f={self.f}{', ' + params if params else ''}))"


def bind(rule: Any, f: int, *, pre: Iterable[PreSpecLike] | None = None, round_seed: int = 0,
         fuse: bool = True, **params: object) -> BoundRule | Chain:
    """Fix a rule's ``f`` and parameters (``aggregators.bind``: a registered name or a
    function), with pre-aggregators before it (``pre=["nnm", ("bucketing", {"s": 2})]``,
    names of :func:`pre_aggregators`). A :class:`Chain` when there are pre-aggregators or the
    rule has state or per-round randomness (centered-clipping, dnc), ``round_seed`` seeding
    its per-round generators; otherwise the plain ``BoundRule``. ``fuse``: clipping and ARC
    handed to the rule as factors (:class:`Chain`); False runs each stage's public function."""
    bound = bind_rule(rule, f, **params)
    stages = normalize_pre(pre)
    chain = Chain(bound.spec, f, dict(params), stages, round_seed, fuse=fuse)
    return chain if stages or chain.stateful else bound


def pre_aggregators() -> list[str]:
    """Registered pre-aggregator names."""
    return list(PRE_AGGREGATORS)
