"""The mimic attack of Karimireddy, He and Jaggi, "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing" (ICLR 2022; Section 4, details in the appendix and the authors'
reference code, whose online estimate of the direction is followed here).

Every Byzantine worker sends an exact copy of one honest worker's vector. Under heterogeneous
data, over-weighting one worker biases the aggregate toward that worker's data, and copies of
an honest vector are indistinguishable from honest vectors by any rule. The worker is chosen
by the paper's heuristic: the one whose vector has the largest projection on the top principal
direction z of the honest vectors' variation, estimated over a warm-up phase.

The attack has state across rounds, explicit and checkpointable (:meth:`Mimic.state_dict`):

* round 0: ``mu = mean`` of the honest vectors; ``z0`` a standard normal draw (from the
  round's ``generator``) and one power step ``z = C z0 / |C z0|`` with
  ``C = sum_i (x_i - mu)(x_i - mu)^T``;
* rounds 1 .. warmup - 1: ``mu <- (t mu + mean) / (t + 1)``, a running mean, and an averaged
  power step ``z <- normalize(t z / (t + 1) + (C z / |C z|) / (t + 1))``, C centred at mu;
* every warm-up round the target is ``argmax_i <x_i, z>`` over this round's honest workers;
* from round ``warmup`` on, z and the target worker are frozen: the attackers copy that worker
  every round.

The target is a worker, not a row: the engine passes ``honest_ids=`` (the worker index of
each honest row; rows are then matched by worker). Without it, row i is taken to be worker i
(exact when the Byzantine workers are fixed). A round where the frozen target is not among the
honest rows (it is Byzantine this round) copies the honest row with the largest <x_i, z>.
``C z`` is computed without forming C: ``U^T (U z)``, two passes over the (h, d) rows.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import torch
from torch import Tensor

from byzsgd.constraints import Constraints, Interval

from ._affine import centered_products, finite_rows
from ._base import ClassicAttack, Context
from ._products import combination
from ._registry import register


@register
class Mimic(ClassicAttack):
    """Copy the honest worker with the largest projection on the top principal direction of
    the honest vectors, estimated over ``warmup`` rounds (Karimireddy, He, Jaggi, ICLR 2022).

    Parameters: ``warmup`` (rounds of estimation of z, >= 1; the target is re-chosen every
    warm-up round and frozen after), ``knowledge`` (``"omniscient"``: the attackers see the
    honest vectors, as in the paper). State: :attr:`t` (calls seen), :attr:`mu`, :attr:`z`,
    :attr:`target` (worker index); :meth:`state_dict` / :meth:`load_state_dict` carry it
    through a checkpoint, :meth:`reset` forgets it.
    """

    name = "mimic"
    summary = ("copy the honest worker with the largest projection on the top principal "
               "direction (Karimireddy, He, Jaggi, ICLR 2022)")
    supported_knowledge = ("omniscient",)
    constraints: ClassVar[Constraints] = {"warmup": [Interval(Integral, 1, None, closed="left")]}

    def __init__(self, *, warmup: int = 10, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.warmup = int(warmup)
        self.reset()

    def reset(self) -> None:
        """Forget the estimates (a new run)."""
        self.t = 0
        self.mu: Tensor | None = None
        self.z: Tensor | None = None
        self.target: int | None = None

    def state_dict(self) -> dict[str, Any]:
        """The attack's state across rounds (for checkpoints)."""
        return {"t": self.t, "mu": self.mu, "z": self.z, "target": self.target}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"t", "mu", "z", "target"} - set(state)
        if missing:
            raise ValueError(f"{self.name}: state lacks {', '.join(sorted(missing))}")
        self.t, self.mu, self.z, self.target = (int(state["t"]), state["mu"], state["z"],
                                                state["target"])

    def _ids(self, ctx: Context, h: int) -> Tensor:
        ids = ctx.extra.get("honest_ids")
        if ids is None:
            return torch.arange(h)
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if ids.numel() != h:
            raise ValueError(f"{self.name}: honest_ids must name one worker per honest row, "
                             f"got {ids.numel()} ids for {h} rows")
        return ids

    def _power_step(self, honest: Tensor, mu: Tensor, z: Tensor) -> Tensor:
        """``C z / |C z|`` with C the scatter matrix of ``honest`` around ``mu``."""
        w = centered_products(honest, mu, z[None, :])[:, 0]
        cz = combination(honest, mu, w)
        norm = float(cz.norm())
        return cz / norm if norm > 0 else z

    def forge(self, ctx: Context) -> Tensor:
        honest = ctx.need_honest().detach()
        ids = self._ids(ctx, honest.shape[0])
        if self.t >= self.warmup and self.mu is not None and self.mu.shape == (honest.shape[1],):
            # Frozen: only the target's row is read (a finite target is what the full path
            # below returns too; a missing or non-finite one falls through to it).
            where = (ids == self.target).nonzero().flatten()
            if where.numel() and bool(torch.isfinite(honest[int(where[0])]).all()):
                self.t += 1
                return ctx.rows(honest[int(where[0])])
        clean, mean = finite_rows(self.name, honest)
        if clean is not honest:  # rows with a NaN or Inf dropped
            ids = ids[torch.isfinite(honest).all(dim=1)]
            honest = clean
        d = honest.shape[1]
        if self.mu is not None and self.mu.shape != (d,):
            raise ValueError(f"{self.name}: state holds estimates of dimension "
                             f"{self.mu.shape[0]}, got vectors of dimension {d}; reset()")
        if self.t < self.warmup:
            if self.t == 0:
                self.mu = mean
                z0 = torch.randn(d, generator=ctx.generator, dtype=torch.float64,
                                 device="cpu").to(honest.device)
                self.z = self._power_step(honest, mean, z0)
            else:
                assert self.mu is not None and self.z is not None
                t = self.t
                self.mu = (t * self.mu + mean) / (t + 1)
                step = self._power_step(honest, self.mu, self.z)
                z = (t * self.z + step) / (t + 1)
                norm = float(z.norm())
                self.z = z / norm if norm > 0 else step
            row = self._best_row(honest)
            self.target = int(ids[row])
        else:
            where = (ids == self.target).nonzero().flatten()
            row = int(where[0]) if where.numel() else self._best_row(honest)
        self.t += 1
        return ctx.rows(honest[row])

    def _best_row(self, honest: Tensor) -> int:
        """The row with the largest <x_i, z> (the first on ties)."""
        assert self.z is not None
        zero = torch.zeros(honest.shape[1], dtype=torch.float64, device=honest.device)
        proj = centered_products(honest, zero, self.z[None, :])[:, 0]
        return int(torch.argmax(proj))
