"""Coordinate-wise rules: each coordinate aggregated on its own.

These tolerate the *generalized* (dimensional) Byzantine model of Xie et al. (Generalized
Byzantine-tolerant SGD, Definition 4): any q of the n values of each coordinate may be
arbitrary, not only whole rows.
"""

from __future__ import annotations

from numbers import Integral

from torch import Tensor

from byzsgd.constraints import Interval

from ._base import Aggregation, as_gradients, check_f, require
from ._orderstats import (
    coordinate_mean_around_median,
    coordinate_median,
    coordinate_trimmed_mean,
)
from ._registry import register


def check_mean(n: int, f: int) -> None:
    check_f("mean", n, f)


@register("mean", summary="arithmetic mean (no defense)", requires=check_mean)
def mean_select(gradients: Tensor, f: int = 0) -> Aggregation:
    """Arithmetic mean of the n rows; no robustness (a single Byzantine row controls it)."""
    x = as_gradients(gradients, "mean")
    check_mean(x.shape[0], f)
    return Aggregation(x.mean(dim=0))


def check_median(n: int, f: int) -> None:
    check_f("median", n, f)
    require("median", n >= 2 * f + 1, "n >= 2f + 1 (a majority of correct values)", n, f)


@register("median", summary="coordinate-wise (marginal) median, Xie et al. Def. 7",
          requires=check_median)
def median_select(gradients: Tensor, f: int) -> Aggregation:
    """Coordinate-wise (marginal) median.

    Definition 7 of Xie et al. (Generalized Byzantine-tolerant SGD), "MarMed"; Definition 2 of
    Fall of Empires. For even n, the mean of the two middle values. With at most f < n/2
    arbitrary values per coordinate the result lies in the range of the correct values
    (Lemma 4), so it stays finite whatever they send (NaN counts as +inf).
    """
    x = as_gradients(gradients, "median")
    check_median(x.shape[0], f)
    return Aggregation(coordinate_median(x))


def check_trimmed_mean(n: int, f: int) -> None:
    check_f("trimmed-mean", n, f)
    require("trimmed-mean", n > 2 * f, "n > 2f (values must remain after trimming)", n, f)


@register("trimmed-mean",
          summary="per coordinate, drop the f largest and f smallest (Yin et al.)",
          requires=check_trimmed_mean)
def trimmed_mean_select(gradients: Tensor, f: int) -> Aggregation:
    """Per coordinate, drop the f largest and f smallest values and average the rest.

    Yin et al. (2018), the third variant listed in A Little Is Enough, Section 2.3, eq. (1).
    """
    x = as_gradients(gradients, "trimmed-mean")
    check_trimmed_mean(x.shape[0], f)
    return Aggregation(coordinate_trimmed_mean(x, f))


def meamed_keep(n: int, f: int, keep: object = None) -> int:
    """How many values per coordinate MeaMed averages: ``keep``, by default n - f."""
    return n - f if keep is None else int(keep)  # type: ignore[call-overload]


def check_meamed(n: int, f: int, keep: int | None = None) -> None:
    """MeaMed's precondition, and ``keep <= n`` (``keep >= 1`` is a declared constraint)."""
    check_f("meamed", n, f)
    require("meamed", n >= 2 * f + 1, "n >= 2f + 1 (a majority of correct values)", n, f)
    if keep is not None:
        require("meamed", 1 <= keep <= n, "1 <= keep <= n", n, f, keep=keep)


@register("meamed", summary="mean of the n - f values nearest the median, Xie et al. Def. 8",
          constraints={"keep": [Interval(Integral, 1, None, closed="left"), None]},
          requires=check_meamed)
def meamed_select(gradients: Tensor, f: int, keep: int | None = None) -> Aggregation:
    """Mean around median: per coordinate, the mean of the ``keep`` values nearest the median.

    Definition 8 of Xie et al. (Generalized Byzantine-tolerant SGD), "MeaMed", with
    ``keep = n - f`` by default (the first trimmed-mean variant of A Little Is Enough, 2.3);
    ``keep = n - 2f`` is the variant Bulyan uses (the second).
    """
    x = as_gradients(gradients, "meamed")
    n = x.shape[0]
    check_meamed(n, f, keep)
    return Aggregation(coordinate_mean_around_median(x, meamed_keep(n, f, keep)))
