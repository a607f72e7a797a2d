"""Pre-aggregators: maps from the received (n, d) matrix to an (n', d) matrix, applied before
a rule (``aggregators.bind("krum", f, pre=["nnm"])``).

* :func:`nnm` -- nearest-neighbour mixing (Allouah et al., "Fixing by Mixing", AISTATS 2023,
  Algorithm 1): each vector replaced by the mean of its n - f nearest neighbours;
* :func:`bucketing` -- Karimireddy, He, Jaggi (ICLR 2022, Algorithm 1): the vectors shuffled
  and averaged in buckets of s;
* :func:`clipping` -- static clipping of every vector to a norm c;
* :func:`arc` -- adaptive robust clipping (Allouah et al., "Boosting robustness by clipping
  gradients in distributed learning", 2024/25, Algorithm 1): the floor(2 (f/n) (n - f))
  largest vectors clipped to the norm of the next largest.

Clipping and ARC are diagonal: output row i is ``s_i x_i``. :func:`clipping_factors` and
:func:`arc_factors` return s alone (one read of x, its row norms); a chain hands s to the rule
instead of the scaled matrix (``chain.py``), and ``clipping(x, f, c=c, out=buffer)`` writes
the scaled matrix into a buffer the caller keeps.

Each is a pure function ``pre(x, f, **params) -> Tensor`` that never modifies its input, with
a ``check_*`` that validates (n, f, params) first. Hostile rows (NaN, +-inf, 1e20, float32
max) stay confined: a non-finite row never leaks into another row's output (NNM, bucketing
average only finite rows into a finite row's output; the clipping rules clip a non-finite row
to 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from byzsgd import kernels

from ._base import as_gradients, check_f, require
from ._mix import mix_rows
from ._norms import row_norms, scaled_rows
from .distances import geometry

# --- nearest-neighbour mixing -----------------------------------------------------------------

def check_nnm(n: int, f: int) -> None:
    check_f("nnm", n, f)
    require("nnm", 2 * f < n, "f < n/2", n, f)


def nnm_weights(sqdist: Tensor, f: int) -> Tensor:
    """The (n, n) mixing matrix of NNM from squared distances (float64, +inf for invalid
    rows): row i holds 1/k on the k = n - f rows nearest row i (itself included, ties to the
    lower index), restricted to finite distances (a row at infinite distance is never
    averaged in: with more than f invalid rows a valid row averages fewer than n - f)."""
    n = sqdist.shape[0]
    k = n - f
    order = torch.argsort(sqdist, dim=1, stable=True)[:, :k]
    near = torch.zeros((n, n), dtype=torch.bool)
    near.scatter_(1, order, True)
    near &= torch.isfinite(sqdist)
    counts = near.sum(dim=1, keepdim=True).clamp_(min=1)
    return near.double() / counts


def nnm(gradients: Tensor, f: int) -> Tensor:
    """Nearest-neighbour mixing (Allouah et al., AISTATS 2023, Algorithm 1):
    ``y_i = 1/(n - f) sum_{j in N_i} x_j``, N_i the n - f vectors nearest x_i in Euclidean
    distance, x_i included. Needs f < n/2 (the paper's setting). Returns (n, d).

    Distances come from the centered Gram matrix of :func:`distances.geometry` (the one Krum
    uses, one read of x); the neighbour means are one blocked pass of ``_mix.py``'s kernel
    (each column chunk of the n rows read once from memory, every output row summed from its
    neighbours there: 51 x 1e6 float32, load ~17: 1.9 s as MKL's dense (n, n) x (n, d)
    product, which the torch implementation still uses, e.g. on a GPU). A row with non-finite
    values (or an overflowing norm) is at infinite distance from every row: no finite row
    averages it in, and its own output is itself (the rule after NNM sees it as it would
    without NNM).
    """
    x = as_gradients(gradients, "nnm")
    n = x.shape[0]
    check_nnm(n, f)
    geo = geometry(x)
    w = nnm_weights(geo.sqdist, f)
    valid = geo.valid
    if kernels.use_torch(x, "nnm"):  # a GEMM: what a GPU does best
        if bool(valid.all()):
            return torch.mm(w.to(device=x.device, dtype=x.dtype), x)
        rows = torch.nonzero(valid, as_tuple=True)[0]
        out = x.clone()
        if rows.numel():
            dev = rows.to(x.device)
            out[dev] = torch.mm(w[rows][:, rows].to(device=x.device, dtype=x.dtype),
                                x.index_select(0, dev))
        return out
    near = (w > 0) & valid[:, None]
    groups = [torch.nonzero(near[i], as_tuple=True)[0].tolist() if bool(valid[i]) else [i]
              for i in range(n)]
    return mix_rows(x, groups)


# --- bucketing ----------------------------------------------------------------------------------

def check_bucketing(n: int, f: int, s: int = 2) -> None:
    check_f("bucketing", n, f)
    if isinstance(s, bool) or not isinstance(s, int):
        raise TypeError(f"bucketing: s must be an int, got {type(s).__name__}")
    require("bucketing", 1 <= s <= n, "1 <= s <= n (bucket size)", n, f, s=s)


def buckets(n: int, s: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """The buckets of Karimireddy et al.'s Algorithm 1: a random permutation of the n rows cut
    into consecutive groups of s; when s does not divide n the last bucket holds the
    n mod s remaining rows (ByzFL does the same), so there are ceil(n/s) buckets."""
    perm = torch.randperm(n, generator=generator)
    return list(torch.split(perm, s))


def bucketing(gradients: Tensor, f: int, *, s: int = 2,
              generator: torch.Generator | None = None) -> Tensor:
    """Bucketing (Karimireddy, He, Jaggi, ICLR 2022, Algorithm 1): shuffle the n vectors with
    a random permutation (drawn from ``generator``: seed it per round), and return the mean
    of each bucket of s consecutive shuffled vectors, (ceil(n/s), d). When s does not divide
    n the last bucket is smaller and is the mean of its own n mod s vectors (the paper's
    ``1/s sum_{k=(i-1)s+1}^{min(n, is)}`` would shrink it; ByzFL averages it, as here).

    A bucket holding a non-finite vector is non-finite; no other bucket is touched (each
    bucket is summed from its own rows only, each row scaled by 1/|bucket| first)."""
    x = as_gradients(gradients, "bucketing")
    n = x.shape[0]
    check_bucketing(n, f, s)
    return mix_rows(x, [rows.tolist() for rows in buckets(n, s, generator)])


# --- clipping ---------------------------------------------------------------------------------

def check_clipping(n: int, f: int, c: float = 1.0) -> None:
    check_f("clipping", n, f)
    if not (isinstance(c, int | float) and not isinstance(c, bool) and 0 < c < math.inf):
        raise ValueError(f"clipping needs a norm 0 < c < inf, got c={c}")


def clip_factors(norms: Tensor, limit: Tensor | float) -> Tensor:
    """The factors (float64, (n,)) that clip rows of ``norms`` to ``limit`` (a scalar or
    (n,)): ``limit / norm`` where the norm exceeds the limit, 1 elsewhere, and 0 for a row of
    non-finite norm that exceeds it (its direction is undefined: clipped to 0)."""
    limit = torch.as_tensor(limit, dtype=torch.float64).expand_as(norms)
    over = ~(norms <= limit)                   # NaN norms count as over
    factors = torch.where(over, limit / norms, torch.ones_like(norms))
    return torch.where(over & ~torch.isfinite(norms), torch.zeros_like(norms), factors)


def clipping_factors(gradients: Tensor, f: int = 0, *, c: float = 1.0) -> Tensor:
    """The factors s (float64, (n,)) of static clipping, ``s_i = min(1, c / |x_i|)`` (0 for a
    row of non-finite norm): :func:`clipping` is ``x_i * s_i``. One read of ``x`` (its row
    norms); what a chain computes instead of the clipped matrix (``chain.py``)."""
    x = as_gradients(gradients, "clipping")
    check_clipping(x.shape[0], f, c)
    return clip_factors(row_norms(x), float(c))


def clipping(gradients: Tensor, f: int = 0, *, c: float = 1.0,
             out: Tensor | None = None) -> Tensor:
    """Static clipping: ``x_i * min(1, c / |x_i|)`` for every row (the clipping pre-aggregator
    of ByzFL, "Clipping"; the static baseline of Allouah et al. 2024/25). ``f`` is not used.
    A row with a non-finite norm (NaN, inf) becomes 0. A new tensor, or ``out`` (x's shape
    and dtype, not ``x`` itself) written and returned: a warm buffer reused round after round
    costs no fresh pages."""
    x = as_gradients(gradients, "clipping")
    return scaled_rows(x, clipping_factors(x, f, c=c), out)


# --- adaptive robust clipping -----------------------------------------------------------------

def check_arc(n: int, f: int) -> None:
    check_f("arc", n, f)
    require("arc", 2 * f < n, "f < n/2", n, f)


def arc_count(n: int, f: int) -> int:
    """How many vectors ARC clips: floor(2 (f/n) (n - f)) (Allouah et al., Algorithm 1);
    at least f when f < n/2, so every Byzantine vector can be clipped."""
    return (2 * f * (n - f)) // n


def arc_factors(gradients: Tensor, f: int) -> Tensor:
    """The factors s (float64, (n,)) of ARC (:func:`arc` is ``x_i * s_i``): with
    k = floor(2 (f/n) (n - f)), ``|x_(k+1)| / |x_i|`` for the k rows of largest norm (ties to
    the lower index, clipped last), 1 for the others; 0 for a non-finite row among the k (or
    for every non-finite row when there are more than k). One read of ``x``."""
    x = as_gradients(gradients, "arc")
    n = x.shape[0]
    check_arc(n, f)
    k = arc_count(n, f)
    if k == 0:
        return torch.ones(n, dtype=torch.float64)
    norms = row_norms(x)
    key = torch.nan_to_num(norms, nan=math.inf)
    order = torch.argsort(key, descending=True, stable=True)
    limit = key[order[k]]
    clip = torch.zeros(n, dtype=torch.bool)
    clip[order[:k]] = True
    limits = torch.where(clip, limit, torch.full_like(norms, math.inf))
    if not math.isfinite(float(limit)):  # more than k non-finite rows: clip them to 0
        limits = torch.where(torch.isfinite(norms), torch.full_like(norms, math.inf),
                             torch.zeros_like(norms))
    return clip_factors(norms, limits)


def arc(gradients: Tensor, f: int, *, out: Tensor | None = None) -> Tensor:
    """Adaptive robust clipping (Allouah et al., "Boosting robustness by clipping gradients
    in distributed learning", 2024/25, Algorithm 1 ARC): with k = floor(2 (f/n) (n - f)),
    the k vectors of largest norm are clipped to the norm of the (k+1)-th largest; the
    others are unchanged. Ties in norm go to the lower index (it is clipped last). Needs
    f < n/2. A non-finite row has norm +inf, is among the k largest when there are at most
    k such rows, and is clipped to 0. A new tensor, or ``out`` written and returned (as
    :func:`clipping`)."""
    x = as_gradients(gradients, "arc")
    factors = arc_factors(x, f)
    if out is None and arc_count(x.shape[0], f) == 0:
        return x.clone()
    return scaled_rows(x, factors, out)


# --- registry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreSpec:
    """A registered pre-aggregator."""

    name: str
    summary: str
    apply: Callable[..., Tensor]
    check: Callable[..., None]
    #: Whether output row i is input row i transformed (clipping, ARC), so a rule's selected
    #: rows still name workers; False when output rows mix inputs (NNM, bucketing).
    keeps_rows: bool
    #: Whether ``apply`` takes ``generator=`` (bucketing's permutation).
    random: bool = False
    #: For a diagonal stage (output row i = s_i x_i: clipping, ARC), ``factors(x, f,
    #: **params)`` -> s (float64, (n,)), which a chain hands to the rule instead of the
    #: scaled matrix; None otherwise.
    factors: Callable[..., Tensor] | None = None

    def rows_out(self, n: int, **params: object) -> int:
        """n', the number of rows the pre-aggregator returns for n."""
        if self.name == "bucketing":
            return -(-n // int(params.get("s", 2)))  # type: ignore[call-overload]
        return n


PRE_AGGREGATORS = {p.name: p for p in [
    PreSpec("nnm", "nearest-neighbour mixing: each vector -> mean of its n - f nearest "
            "(Allouah et al. 2023)", nnm, check_nnm, False),
    PreSpec("bucketing", "random buckets of s vectors, averaged (Karimireddy et al. 2022)",
            bucketing, check_bucketing, False, random=True),
    PreSpec("clipping", "every vector clipped to norm c", clipping, check_clipping, True,
            factors=clipping_factors),
    PreSpec("arc", "adaptive robust clipping: the floor(2(f/n)(n-f)) largest clipped to the "
            "next largest norm (Allouah et al. 2024)", arc, check_arc, True, factors=arc_factors),
]}


def pre_spec(name: str) -> PreSpec:
    """The pre-aggregator ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return PRE_AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown pre-aggregator {name!r}; known pre-aggregators: "
                         f"{', '.join(PRE_AGGREGATORS)}") from None
