"""One round of one rule under one attack, on given gradients (the library behind
``byzsgd round``, whose command line is :mod:`byzsgd.cli_round`).

For a rule and an attack on given correct gradients, report the aggregate's inner product and
cosine with the mean correct gradient (DSSGD-Byzantine tolerance, Definition 4 of Xie et al.,
Fall of Empires: a rule is tolerant when ``<g, Aggr(V u U)> >= 0``; here g is estimated by the
mean of the given correct gradients), its distance to that mean, and which Byzantine rows the
rule selected.

Layout of the rule's input (classic attacks): the h correct rows first, then the f Byzantine
rows (indices h .. h + f - 1, the ``"fixed"`` convention of :mod:`byzsgd.threat`). Rules break
ties toward the lower index, i.e. toward a correct row.

``own`` (the gradients the f Byzantine workers computed honestly, read by non-omniscient
attacks) defaults to a copy of the first f correct rows: gradients from the same distribution
that the attackers could have computed themselves. Pass ``own=`` to use other samples (the
CLI's ``--synthetic`` draws f fresh rows from the same distribution). For an omniscient attack
it does not matter.

Dimensional attacks (generalized model, Definition 4 of Generalized Byzantine-tolerant SGD):
every one of the h given rows is a worker's correct gradient and the attack corrupts values
inside them, so the rule's input is the corrupted (h, d) matrix and the rule's ``f`` plays the
role of q, the number of Byzantine values per coordinate it must tolerate. The report's
``byzantine_rows`` are then the rows holding at least one corrupted value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import attacks as _attacks
from .metrics import direction_diagnostics

if TYPE_CHECKING:
    from .aggregators import BoundRule


@dataclass(frozen=True)
class RoundReport:
    """The outcome of :func:`evaluate`.

    ``inner_product``, ``cosine``, ``distance`` compare the aggregate with the mean correct
    gradient g (float64; ``cosine`` is NaN when either vector is zero or not finite);
    ``selected`` lists the rows a selection-based rule selected (``None`` for the others) and
    ``byzantine_selected`` those among ``byzantine_rows``; ``tolerant`` is
    ``inner_product >= 0`` (False when it is NaN); ``gamma`` is the signed gamma of the
    ``lp-coordinate``/``linf`` attacks (their ``last_gamma``), ``None`` for the others.
    """

    rule: str
    rule_f: int
    attack: str
    attack_params: dict[str, object]
    n: int
    h: int
    f: int
    dimensional: bool
    inner_product: float
    cosine: float
    distance: float
    aggregate_norm: float
    mean_norm: float
    selected: list[int] | None
    byzantine_selected: list[int] | None
    byzantine_rows: Sequence[int]
    corrupted_values: int | None
    tolerant: bool
    gamma: float | None
    aggregate: Tensor = field(repr=False, compare=False)
    mean: Tensor = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields (tensors left out; non-finite floats as strings)."""
        def clean(v: object) -> object:
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if isinstance(v, (range, tuple, list)):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v
        keys = ["rule", "rule_f", "attack", "attack_params", "n", "h", "f", "dimensional",
                "inner_product", "cosine", "distance", "aggregate_norm", "mean_norm",
                "selected", "byzantine_selected", "byzantine_rows", "corrupted_values",
                "tolerant", "gamma"]
        return {k: clean(getattr(self, k)) for k in keys}

    def format(self) -> str:
        """A readable multi-line report."""
        params = ", ".join(f"{k}={v}" for k, v in self.attack_params.items())
        rows = list(self.byzantine_rows)
        if self.dimensional:
            who = (f"n={self.n} correct workers; {self.corrupted_values} values corrupted in "
                   f"{len(rows)} rows (rule tolerates q={self.rule_f} per coordinate)")
        else:
            span = f"rows {rows[0]}-{rows[-1]}" if rows else "none"
            who = (f"n={self.n}: {self.h} correct (rows 0-{self.h - 1}), {self.f} Byzantine "
                   f"({span})")
        lines = [
            f"rule             {self.rule} (f={self.rule_f})",
            f"attack           {self.attack}" + (f" ({params})" if params else "")
            + ("" if self.gamma is None else f"; gamma_m = {self.gamma:.6g}"),
            f"workers          {who}",
            f"<aggr, g>        {self.inner_product:.6g}",
            f"cosine           {self.cosine:.6g}",
            f"|aggr - g|       {self.distance:.6g}",
            f"|aggr|, |g|      {self.aggregate_norm:.6g}, {self.mean_norm:.6g}",
        ]
        if self.aggregate.numel() <= 8:
            values = ", ".join(f"{float(v):.6g}" for v in self.aggregate)
            lines.append(f"aggregate        [{values}]")
        if self.selected is not None:
            lines.append(f"selected         {self.selected} (Byzantine: "
                         f"{self.byzantine_selected})")
        verdict = ("tolerant: <aggr, g> >= 0" if self.tolerant else
                   "NOT tolerant: <aggr, g> < 0 (Fall of Empires, Definition 4)")
        lines.append(f"verdict          {verdict}")
        return "\n".join(lines)


def _as_rule(rule: str | BoundRule, f: int,
             rule_params: dict[str, object] | None) -> BoundRule:
    from . import aggregators
    if isinstance(rule, str):
        return aggregators.bind(rule, f, **(rule_params or {}))
    if rule_params:
        raise ValueError("rule_params only apply when rule is given by name")
    if not (hasattr(rule, "select") and hasattr(rule, "f") and hasattr(rule, "name")):
        raise ValueError(f"rule must be a rule name or a BoundRule, got {type(rule).__name__}")
    return rule


def _as_attack(attack: str | _attacks.Attack,
               attack_params: dict[str, object] | None) -> _attacks.Attack:
    if isinstance(attack, str):
        return _attacks.get(attack, **(attack_params or {}))
    if attack_params:
        raise ValueError("attack_params only apply when attack is given by name")
    if not isinstance(attack, _attacks.Attack):
        raise ValueError(f"attack must be an attack name or an Attack object, got "
                         f"{type(attack).__name__}")
    return attack


def evaluate(rule: str | BoundRule, attack: str | _attacks.Attack, honest: Tensor, f: int, *,
             rule_params: dict[str, object] | None = None,
             attack_params: dict[str, object] | None = None, own: Tensor | None = None,
             seed: int = 0, context: dict[str, object] | None = None) -> RoundReport:
    """Run ``attack`` against ``rule`` for one round on the correct gradients ``honest``.

    ``rule`` is a rule name (bound with ``f`` and ``rule_params``) or a ``BoundRule``;
    ``attack`` a name (built with ``attack_params``) or an attack object; ``honest`` the
    (h, d) correct gradients; ``f`` the number of Byzantine workers (for dimensional
    attacks: the rule's per-coordinate q). ``own`` defaults to a copy of ``honest[:f]`` (see
    the module doc); ``seed`` seeds the attack's ``torch.Generator``; ``context`` adds
    keywords for the attack (e.g. ``backdoor_loss``). Inputs are not modified.
    """
    if not isinstance(honest, Tensor) or honest.dim() != 2 or not honest.is_floating_point():
        raise ValueError("honest must be a floating tensor of shape (h, d)")
    h = honest.shape[0]
    if h < 1:
        raise ValueError("honest must hold at least one correct gradient")
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"f must be an int >= 0, got {f!r}")
    bound = _as_rule(rule, f, rule_params)
    atk = _as_attack(attack, attack_params)
    generator = torch.Generator().manual_seed(int(seed))
    extra = dict(context or {})
    corrupted_values: int | None = None
    if atk.dimensional:
        received, mask = atk(gradients=honest, generator=generator, f=f, n=h, rule=bound,
                             **extra)
        byzantine_rows: Sequence[int] = torch.nonzero(mask.any(dim=1)).flatten().tolist()
        corrupted_values = int(mask.sum())
        n = h
    else:
        if own is None and f <= h:
            own = honest[:f].clone()
        byzantine = atk(honest=honest, own=own, f=f, n=h + f, rule=bound,
                        generator=generator, **extra)
        received = torch.cat([honest, byzantine.to(honest.dtype)])
        byzantine_rows = range(h, h + f)
        n = h + f
    result = bound.select(received)
    g = honest.detach().double().mean(dim=0)
    a = result.value.detach().double()
    diag = direction_diagnostics(g, a)
    ip = diag["inner_product"]
    selected = None if result.selected is None else [int(i) for i in result.selected]
    byz = set(byzantine_rows)
    return RoundReport(
        rule=bound.name, rule_f=bound.f, attack=atk.name, attack_params=atk.params, n=n, h=h,
        f=f, dimensional=atk.dimensional, inner_product=ip, cosine=diag["cosine"],
        distance=diag["distance"], aggregate_norm=diag["aggregate_norm"],
        mean_norm=float(g.norm()),
        selected=selected,
        byzantine_selected=None if selected is None else [i for i in selected if i in byz],
        byzantine_rows=byzantine_rows, corrupted_values=corrupted_values,
        tolerant=ip >= 0, gamma=getattr(atk, "last_gamma", None), aggregate=a, mean=g)
