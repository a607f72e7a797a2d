"""Brute (El Mhamdi et al., Hidden Vulnerability 2.3.1)."""

from __future__ import annotations

import itertools
import math
from numbers import Integral

import torch
from torch import Tensor

from byzsgd.constraints import Interval

from ._base import P_NORM, Aggregation, as_gradients, check_f, require
from ._registry import register
from .distances import Geometry, geometry

#: Subsets evaluated per vectorized step.
CHUNK = 16384


def check_brute(n: int, f: int, max_subsets: int = 1_000_000) -> None:
    check_f("brute", n, f)
    require("brute", n >= 2 * f + 1, "n >= 2f + 1", n, f)
    count = math.comb(n, n - f)
    if count > max_subsets:
        raise ValueError(
            f"brute needs C(n, n - f) <= max_subsets to enumerate its subsets, got "
            f"C({n}, {n - f}) = {count:,} > max_subsets = {max_subsets:,}; use a smaller n or "
            f"f, raise max_subsets, or use krum/bulyan")


def smallest_diameter_subset(sqdist: Tensor, f: int) -> Tensor:
    """The (n - f)-subset of rows with the smallest diameter (max pairwise distance), as
    sorted indices.

    Several subsets often share the smallest diameter (it is set by one pair, so dropping
    any of the other rows changes nothing); among them we take the one with the smallest sum
    of pairwise squared distances (the most clumped), which keeps the rule invariant under a
    permutation of the workers. Exact ties left after that go to the first subset in
    lexicographic order.
    """
    n = sqdist.shape[0]
    size = n - f
    inf = float("inf")
    best_key = (inf, inf)
    best: tuple[int, ...] = tuple(range(size))
    combos = itertools.combinations(range(n), size)
    while True:
        chunk = list(itertools.islice(combos, CHUNK))
        if not chunk:
            break
        idx = torch.tensor(chunk, dtype=torch.long)
        within = sqdist[idx[:, :, None], idx[:, None, :]]
        diameters = within.amax(dim=(1, 2))
        spread = within.sum(dim=(1, 2))
        smallest = diameters.min()
        spread = torch.where(diameters == smallest, spread, torch.full_like(spread, inf))
        i = int(torch.argmin(spread))
        key = (float(diameters[i]), float(spread[i]))
        if key < best_key:
            best_key = key
            best = chunk[i]
    return torch.tensor(best, dtype=torch.long)


def brute_selection(geo: Geometry, f: int, **_: object) -> Tensor:
    """The n - f rows Brute averages, from the geometry alone."""
    return smallest_diameter_subset(geo.sqdist, f)


@register("brute", summary="mean of the n - f vectors of smallest diameter, El Mhamdi et al. 2.3.1",
          selects_rows=True, selection=brute_selection,
          constraints={"p": P_NORM, "max_subsets": [Interval(Integral, 1, None, closed="left")]},
          requires=check_brute)
def brute_select(gradients: Tensor, f: int, *, p: float = 2.0,
                 max_subsets: int = 1_000_000) -> Aggregation:
    """Brute: the mean of the n - f vectors whose subset has the smallest diameter in the
    l_p norm (Hidden Vulnerability 2.3.1; needs n >= 2f + 1). Enumerates all C(n, f)
    subsets, so it refuses sizes with more than ``max_subsets`` of them."""
    x = as_gradients(gradients, "brute")
    check_brute(x.shape[0], f, max_subsets)
    geo = geometry(x, p)
    chosen = brute_selection(geo, f)
    return Aggregation(geo.mean(x, chosen), chosen)
