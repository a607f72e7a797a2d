"""Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021).

The rule has state: the previous round's aggregate, around which the vectors are clipped.
:func:`centered_clipping_select` is pure and takes that state as ``center=``; the bound form
(``aggregators.bind("centered-clipping", f, tau=...)``, a :class:`~.chain.Chain`) holds it,
feeds it in, stores each aggregate the server commits (``Chain.commit``) and carries it in
``state_dict()`` / ``load_state_dict()``, which the server's checkpoint holds.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor

from byzsgd.constraints import Interval

from ._base import Aggregation, as_gradients, check_f, require
from ._norms import row_norms
from ._registry import register


def check_centered_clipping(n: int, f: int) -> None:
    """The precondition on n and f (tau and iters are declared constraints)."""
    check_f("centered-clipping", n, f)
    require("centered-clipping", n >= 2 * f + 1, "n >= 2f + 1 (a majority of correct vectors)",
            n, f)


@register("centered-clipping",
          summary="iterations v <- v + mean_i clip(x_i - v, tau) around the previous "
                  "aggregate (Karimireddy et al. 2021; has state)",
          constraints={"tau": [Interval(Real, 0, math.inf, closed="neither")],
                       "iters": [Interval(Integral, 1, None, closed="left")],
                       "center": [Tensor, None]},
          requires=check_centered_clipping)
def centered_clipping_select(gradients: Tensor, f: int, *, tau: float = 100.0, iters: int = 1,
                             center: Tensor | None = None) -> Aggregation:
    """Centered clipping (Karimireddy, He, Jaggi, ICML 2021, eq. (CC), Section 4):
    ``iters`` times, ``v <- v + 1/n sum_i (x_i - v) min(1, tau / |x_i - v|)``, starting from
    ``center``: the previous round's aggregate (the rule's state; 0 when None, as in the
    paper's first round and ByzFL's ``CenteredClipping(m=None)``). The paper shows one
    iteration suffices (L = 1); ``tau = 100`` is ByzFL's default.

    Each vector moves v by at most tau / n, so f Byzantine vectors move it by at most
    f tau / n per iteration whatever they hold; a vector with non-finite ``|x_i - v|`` (NaN,
    inf) contributes 0 (its clipped direction is undefined). Norms are accumulated in float64.
    """
    x = as_gradients(gradients, "centered-clipping")
    n, d = x.shape
    check_centered_clipping(n, f)
    if center is None:
        v = x.new_zeros(d)
    else:
        if center.shape != (d,):
            raise ValueError(f"centered-clipping: center must have shape ({d},) like a "
                             f"gradient row, got {tuple(center.shape)}")
        if not bool(torch.isfinite(center).all()):
            raise ValueError("centered-clipping: center (the previous aggregate) must be finite")
        v = center.to(device=x.device, dtype=x.dtype)
    for _ in range(iters):
        norms = row_norms(x, v)
        weights = torch.where(norms > tau, tau / norms, torch.ones_like(norms))
        weights = torch.where(torch.isfinite(norms), weights, torch.zeros_like(weights))
        rows = torch.nonzero(weights, as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        w = weights[rows]
        part = x if rows.numel() == n else x.index_select(0, rows)
        moved = torch.mv(part.T, (w / n).to(x.dtype))
        v = moved.add_(v, alpha=1.0 - float(w.sum()) / n)
    return Aggregation(v)
