"""What a run measures: accuracy, backdoor success, and per-round robustness diagnostics."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


def cross_entropy(logits: Tensor, labels: Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits, labels))


def backdoor_success(logits: Tensor, targets: Tensor) -> float:
    """Fraction of backdoored inputs classified as the attacker's target."""
    return float((logits.argmax(dim=1) == targets).float().mean())


def direction_sums(true_direction: Tensor, aggregate: Tensor) -> Tensor:
    """The float64 sums ``[<g, a>, |g|^2, |a|^2, |a - g|^2]`` of the mean correct gradient g
    and the aggregate a, from which :func:`diagnostics_from_sums` takes the diagnostics. Sums
    over disjoint coordinate shards add up to the sums of the whole vectors (the distributed
    servers each sum their shard)."""
    g = true_direction.double()
    a = aggregate.double()
    diff = a - g
    return torch.stack([g @ a, g @ g, a @ a, diff @ diff])


def diagnostics_from_sums(sums: Tensor) -> dict[str, float]:
    """How the aggregate relates to the mean correct gradient g, from
    :func:`direction_sums`.

    ``inner_product`` is <g, Aggr>, whose sign is Fall of Empires' DSSGD-Byzantine-tolerance
    criterion (Definition 4: tolerant iff <g, E[Aggr]> >= 0); ``cosine`` its normalized form;
    ``distance`` is |Aggr - g|, the quantity classic resilience bounds.
    """
    inner, gg, aa, dd = (float(v) for v in sums)
    norms = math.sqrt(gg) * math.sqrt(aa)
    return {"inner_product": inner,
            "cosine": inner / norms if norms > 0 and math.isfinite(norms) else float("nan"),
            "aggregate_norm": math.sqrt(aa), "distance": math.sqrt(dd)}


def direction_diagnostics(true_direction: Tensor, aggregate: Tensor) -> dict[str, float]:
    """:func:`diagnostics_from_sums` of the whole vectors: the one definition of the round's
    direction diagnostics (simulator, distributed servers, ``byzsgd round``)."""
    return diagnostics_from_sums(direction_sums(true_direction, aggregate))


def byzantine_selected(selected: list[Tensor] | None, byzantine: Tensor) -> float:
    """Byzantine rows among the rows a selection-based rule picked (mean over shards);
    NaN for rules that do not select rows."""
    if selected is None:
        return float("nan")
    return sum(float(torch.isin(s, byzantine).sum()) for s in selected) / len(selected)
