"""What the adaptive attacks share: clean benign rows, centred products, the closed-form
geometry of an affine family of candidates, and the assembled input a rule is asked about.

Most adaptive attacks send f copies of one vector ``B(t) = a + t e`` and choose the scalar t by
asking a question about the input ``[benign; B(t) x f]``: Min-Max and Min-Sum (Shejwalkar &
Houmansadr) about its distances, Fang et al.'s attack on Krum whether the rule selects B(t),
the optimal ALIE / IPM what the rule returns. The distance questions need not read the
(h, d) benign rows once per t: with ``u_i = x_i - c`` (c the benign mean) everything follows
from ``U U^T`` (one centred Gram matrix), ``U e``, ``U v`` (``v = a - c``) and three scalars,
O(h^2 d) once and O(n^2) per t (:class:`AffineCandidates`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from byzsgd.aggregators._gram import centered_gram
from byzsgd.aggregators.distances import Geometry, finish_geometry, gram_distances

from ._base import Context
from ._products import centered_products, column_sums

__all__ = ["AffineCandidates", "assembled", "centered_products", "finite_rows", "mean64"]


def finite_rows(attack: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, mean)``: the rows of ``x`` (m, d) holding only finite values (``x`` itself when
    all do) and their mean, accumulated in float64.

    A benign row with a NaN or Inf (a faulty worker the attacker overheard) would poison every
    mean and distance the attack computes; the attack ignores it. ``ValueError`` when no row
    is finite. The common case costs one pass: a finite column sum means finite rows.
    """
    total = column_sums(x)
    if bool(torch.isfinite(total).all()):
        return x, total / x.shape[0]
    keep = torch.isfinite(x).all(dim=1)
    if not bool(keep.any()):
        raise ValueError(f"{attack}: needs at least one benign row with only finite values, "
                         f"got {x.shape[0]} rows each holding a NaN or Inf")
    rows = x[keep]
    return rows, mean64(rows)


def mean64(x: Tensor) -> Tensor:
    """The mean of the rows of ``x`` accumulated in float64 (returned in float64)."""
    return column_sums(x) / x.shape[0]


class AffineCandidates:
    """The l_2 geometry of ``[benign (h rows); f copies of B(t) = a + t e]`` as a function of t.

    Built once from the benign rows (their Gram matrix centred at their mean c, and their
    products with ``e`` and ``v = a - c``); :meth:`at` then returns the
    :class:`~byzsgd.aggregators.distances.Geometry` of the assembled input in O(n^2), which a
    distance-based rule's ``selection`` reads as it would the input itself, and
    :meth:`sq_to_benign` the squared distances from B(t) to each benign row in O(h).
    """

    def __init__(self, benign: Tensor, a: Tensor, e: Tensor, f: int,
                 center: Tensor | None = None) -> None:
        self.h, self.f = benign.shape[0], f
        c = mean64(benign) if center is None else center.double()
        self.center = c
        v = a.double() - c
        ed = e.double()
        #: U U^T, U = benign - c (float64, h x h).
        self.gram = centered_gram(benign, c.to(benign.dtype))
        uv_ue = centered_products(benign, c, torch.stack([v, ed]))
        self.uv, self.ue = uv_ue[:, 0], uv_ue[:, 1]
        self.vv, self.ve, self.ee = float(v @ v), float(v @ ed), float(ed @ ed)

    @property
    def benign_sq(self) -> Tensor:
        """Squared distances between the benign rows (h, h), float64."""
        return gram_distances(self.gram)[0]

    def sq_to_benign(self, t: float) -> Tensor:
        """``|B(t) - x_i|^2`` for every benign row (h,), float64."""
        diag = self.gram.diagonal()
        bb = self.vv + 2.0 * t * self.ve + t * t * self.ee
        return (diag + bb - 2.0 * (self.uv + t * self.ue)).clamp_(min=0.0)

    def at(self, t: float) -> Geometry:
        """The geometry of the assembled input (n = h + f rows; the copies last)."""
        h, n = self.h, self.h + self.f
        gram = torch.empty((n, n), dtype=torch.float64)
        gram[:h, :h] = self.gram
        cross = self.uv + t * self.ue
        gram[:h, h:] = cross[:, None]
        gram[h:, :h] = cross[None, :]
        gram[h:, h:] = self.vv + 2.0 * t * self.ve + t * t * self.ee
        sq, valid = gram_distances(gram)
        return finish_geometry(sq, valid, gram, 2.0)


def assembled(ctx: Context, honest: Tensor) -> Tensor:
    """An (n, d) matrix whose first h rows are ``honest`` and whose last f rows the attack may
    write (its candidates), in ``ctx.dtype``.

    When the caller's ``out`` rows directly follow the honest rows in memory (the simulator
    forges in place after the honest rows of the received matrix), this is a view of both:
    no copy of the (h, d) honest rows. The honest rows are never written.
    """
    h, f, d = honest.shape[0], ctx.f, ctx.d
    out = ctx.out
    if out is not None and honest.dtype == out.dtype and honest.is_contiguous() \
            and out.is_contiguous() and honest.device == out.device \
            and honest.untyped_storage().data_ptr() == out.untyped_storage().data_ptr() \
            and honest.data_ptr() + honest.numel() * honest.element_size() == out.data_ptr():
        full = torch.empty(0, dtype=honest.dtype, device=honest.device)
        return full.set_(honest.untyped_storage(), honest.storage_offset(), (h + f, d), (d, 1))
    full = torch.empty((h + f, d), dtype=ctx.dtype, device=honest.device)
    full[:h] = honest
    return full
