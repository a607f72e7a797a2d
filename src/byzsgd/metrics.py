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


def direction_diagnostics(true_direction: Tensor, aggregate: Tensor) -> dict[str, float]:
    """How the aggregate relates to the mean correct gradient g.

    ``inner_product`` is <g, Aggr>, whose sign is Fall of Empires' DSSGD-Byzantine-tolerance
    criterion (Definition 4: tolerant iff <g, E[Aggr]> >= 0); ``cosine`` its normalized form;
    ``distance`` is |Aggr - g|, the quantity classic resilience bounds.
    """
    g = true_direction.double()
    a = aggregate.double()
    inner = float(g @ a)
    norms = float(g.norm()) * float(a.norm())
    return {
        "inner_product": inner,
        "cosine": inner / norms if norms > 0 and math.isfinite(norms) else float("nan"),
        "aggregate_norm": float(a.norm()),
        "distance": float((a - g).norm()),
    }


def byzantine_selected(selected: list[Tensor] | None, byzantine: Tensor) -> float:
    """Byzantine rows among the rows a selection-based rule picked (mean over shards);
    NaN for rules that do not select rows."""
    if selected is None:
        return float("nan")
    return sum(float(torch.isin(s, byzantine).sum()) for s in selected) / len(selected)
