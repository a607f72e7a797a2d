"""Brute (El Mhamdi et al., Hidden Vulnerability 2.3.1)."""

from __future__ import annotations

import itertools
import math
from functools import cmp_to_key
from numbers import Integral

import torch
from torch import Tensor

from byzsgd.constraints import Interval

from ._base import P_NORM, Aggregation, as_gradients, check_f, require
from ._registry import register
from ._rows import compare_rows
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


def smallest_diameter_subset(sqdist: Tensor, f: int, *, rows: Tensor | None = None,
                             index: Tensor | None = None) -> Tensor:
    """The (n - f)-subset of rows with the smallest diameter (max pairwise distance), as
    sorted indices.

    Several subsets often share the smallest diameter (it is set by one pair, so dropping
    any of the other rows changes nothing); among them we take the one with the smallest sum
    of pairwise squared distances (the most clumped). Subsets still tied after that are told
    apart by value: the one whose mean of ``rows[index[i]]`` comes first lexicographically
    (the mean is what Brute outputs, and choosing by it does not depend on how the workers are
    numbered). Without ``rows`` the first tied subset in lexicographic order of indices wins.
    """
    n = sqdist.shape[0]
    size = n - f
    inf = float("inf")
    best_key = (inf, inf)
    best = tuple(range(size))
    # Subsets tied at the best key, one per multiset of row values (``classes``: the first row
    # equal to each row, computed on the first tie only); copies of one vector tie by the
    # C(n, f) without adding a distinct candidate.
    tied_sets: dict[tuple[int, ...], tuple[int, ...]] = {}
    classes: list[int] | None = None
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
            best_key, best = key, chunk[i]
            tied_sets = {}
        if key == best_key and rows is not None and math.isfinite(key[1]):
            tied = ((diameters == diameters[i]) & (spread == spread[i])).nonzero().flatten()
            if tied.numel() > 1 or tied_sets or chunk[i] != best:
                if classes is None:
                    classes = _value_classes(rows, index, n)
                for j in tied.tolist():
                    tied_sets.setdefault(tuple(sorted(classes[r] for r in chunk[j])), chunk[j])
                tied_sets.setdefault(tuple(sorted(classes[r] for r in best)), best)
    if len(tied_sets) > 1 and rows is not None:
        candidates = list(tied_sets.values())
        means = [rows[[_at(index, r) for r in s]].double().mean(0) for s in candidates]
        first = min(range(len(candidates)),
                    key=cmp_to_key(lambda a, b: compare_rows(means[a], means[b])))
        best = candidates[first]
    return torch.tensor(best, dtype=torch.long)


def _at(index: Tensor | None, i: int) -> int:
    return i if index is None else int(index[i])


def _value_classes(rows: Tensor, index: Tensor | None, n: int) -> list[int]:
    """For each of the n positions, the first position whose row has the same values."""
    classes = list(range(n))
    for i in range(n):
        for j in range(i):
            if classes[j] == j and torch.equal(rows[_at(index, i)], rows[_at(index, j)]):
                classes[i] = j
                break
    return classes


def brute_selection(geo: Geometry, f: int, **_: object) -> Tensor:
    """The n - f rows Brute averages, from the geometry alone."""
    return smallest_diameter_subset(geo.sqdist, f, rows=geo.rows)


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
