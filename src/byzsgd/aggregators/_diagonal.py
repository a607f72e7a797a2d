"""Rules run on rows given lazily, as ``x_i * s_i``: what a chain hands its rule after clipping
or ARC (``chain.py``) instead of writing the scaled (n, d) matrix.

Clipping and ARC are diagonal maps, output row i = ``s_i x_i`` (``preaggregation.py``:
:func:`~byzsgd.aggregators.preaggregation.clipping_factors`, ``arc_factors``). Writing
``s x`` costs a read and a write of (n, d) (and, into fresh memory, page faults worth several
read passes); a rule that reads its rows once can apply s on the way instead:

* the mean: ``(1/n) sum_i s_i x_i``, one weighted pass (a matrix-vector product);
* the coordinate-wise order statistics (median, trimmed mean, mean around median): each row is
  multiplied by its factor while the kernel copies it in (``_orderstats.py``), in x's dtype,
  so the result is the one on the scaled matrix, bit for bit.

:func:`run_scaled` returns None for every other rule (and for a rule run on the torch
implementation), and the chain writes ``s x`` into a workspace it keeps from round to round
(no fresh pages). It is only called with factors that :func:`~byzsgd.aggregators._norms.
plain_factors` accepts: a row clipped to 0 (non-finite: 0 * inf is NaN) or by a factor below
float32's range is written out explicitly, as the clipping rules' own guarantees say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ._base import Aggregation
from ._orderstats import (
    coordinate_mean_around_median,
    coordinate_median,
    coordinate_trimmed_mean,
)
from .coordinatewise import (
    meamed_keep,
    meamed_select,
    mean_select,
    median_select,
    trimmed_mean_select,
)


def scaled_mean(x: Tensor, scales: Tensor) -> Tensor:
    """``(1/n) sum_i scales_i x_i`` (scales float64, (n,)) in one pass over ``x``: the mean of
    the scaled rows, up to float32 rounding (the weights ``scales_i / n`` are rounded once,
    and the sum is taken in another order than ``(x * s).mean(0)``: within a few ulps)."""
    n = x.shape[0]
    w = (scales / n).to(device=x.device, dtype=x.dtype)
    return torch.mv(x.T, w)


def _mean(x: Tensor, s: Tensor, f: int, params: Mapping[str, object]) -> Aggregation:
    return Aggregation(scaled_mean(x, s))


def _median(x: Tensor, s: Tensor, f: int, params: Mapping[str, object]) -> Aggregation:
    return Aggregation(coordinate_median(x, scales=s))


def _trimmed(x: Tensor, s: Tensor, f: int, params: Mapping[str, object]) -> Aggregation:
    return Aggregation(coordinate_trimmed_mean(x, f, scales=s))


def _meamed(x: Tensor, s: Tensor, f: int, params: Mapping[str, object]) -> Aggregation:
    keep = meamed_keep(x.shape[0], f, params.get("keep"))
    return Aggregation(coordinate_mean_around_median(x, keep, scales=s))


#: A rule's function -> its implementation on lazily scaled rows ``(x, s, f, params)``.
#: Keyed by the function, not the name: a user's rule registered under a built-in name with
#: ``replace=True`` is not taken for the built-in one.
SCALED: dict[Callable[..., object], Callable[..., Aggregation]] = {
    mean_select: _mean,
    median_select: _median,
    trimmed_mean_select: _trimmed,
    meamed_select: _meamed,
}


def run_scaled(function: Callable[..., object], x: Tensor, scales: Tensor, f: int,
               params: Mapping[str, object]) -> Aggregation | None:
    """The rule ``function`` on the rows ``x_i * scales_i`` without writing them, or None
    where it has no such implementation (the caller writes the rows). ``params`` are the
    rule's checked parameters; one naming an implementation other than ``"auto"`` (``impl``)
    leaves the rule to the caller."""
    fused = SCALED.get(function)
    if fused is None or params.get("impl", "auto") != "auto":
        return None
    return fused(x, scales, f, params)
