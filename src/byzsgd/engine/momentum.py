"""Worker-side momentum: each honest worker sends its momentum instead of its gradient.

Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization" (ICML
2021, Algorithm 2) and Farhadkhani et al., "Byzantine Machine Learning Made Easy" (ICML 2022,
eq. (2)) let every correct worker i keep a momentum

    m_i^0 = 0,    m_i^t = beta m_i^{t-1} + (1 - beta) g_i^t,

(the papers' form, with the (1 - beta) factor: an exponential average of the worker's
gradients, as ByzFL's ``Client.get_flat_gradients_with_momentum``), and send m_i^t where it
would have sent g_i^t. Averaging over rounds shrinks the variance of the correct vectors by
about (1 - beta) / (1 + beta), which is what lets a robust rule tell them from Byzantine ones
that stay consistent across rounds. The server then aggregates the momenta with its rule and
steps ``theta - lr * aggregate``; a server momentum (``config.momentum``, heavy-ball on the
aggregate, :func:`~byzsgd.engine.server.sgd_step`) applies on top when also set (the papers
use one or the other: ``worker_momentum`` > 0 with ``momentum`` = 0).

Whose buffer. A buffer belongs to a worker identity, not to a row of the received matrix. The
honest computation runs for every worker every round, Byzantine or not (as the distributed
runtime does: each worker process computes its vector before it learns what the attack
wants), so a worker that was Byzantine in round t - 1 (``selection = random``) resumes round t
with the buffer its honest gradients would have built: being Byzantine does not reset or
freeze it. Under a data attack (label flipping) a Byzantine worker's gradient is computed on
its poisoned labels and enters its buffer like any other (the worker runs the honest
algorithm on poisoned data). The attack reads the honest workers' momenta (the rows it sees
are momenta), and an attack with ``knowledge = "own"`` its own workers' momenta.

Exactness. The update is two elementwise products and one sum, each rounded once (no fused
multiply-add), so it gives the same floats whether a process updates n rows at once (the
simulator) or one (a distributed worker), on any layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class WorkerMomentum:
    """The momentum buffers of the workers ``workers`` (all n in the simulator, one in a
    distributed worker process), zero until their first update."""

    def __init__(self, beta: float, workers: Sequence[int]) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (
                math.isfinite(beta) and 0 < beta < 1):
            raise ValueError(f"worker_momentum must be a number in (0, 1) to keep buffers, "
                             f"got {beta!r}")
        self.beta = float(beta)
        self.workers = list(workers)
        self._position = {w: k for k, w in enumerate(self.workers)}
        #: (len(workers), d), one row per worker in ``workers`` order; None before any update.
        self.buffers: Tensor | None = None

    def update(self, rows: Sequence[int], vectors: Tensor) -> Tensor:
        """``vectors`` (one gradient per worker of ``rows``) replaced in place by the workers'
        new momenta ``beta m + (1 - beta) g``, which the buffers keep; returns ``vectors``."""
        if vectors.shape[0] != len(rows):
            raise ValueError(f"worker momentum: {len(rows)} workers but {vectors.shape[0]} "
                             f"vectors")
        if self.buffers is None:
            self.buffers = torch.zeros((len(self.workers), vectors.shape[1]),
                                       dtype=vectors.dtype, device=vectors.device)
        index = torch.tensor([self._position[w] for w in rows], dtype=torch.long,
                             device=self.buffers.device)
        momenta = self.buffers.index_select(0, index).mul_(self.beta)
        momenta.add_(torch.mul(vectors, 1.0 - self.beta))
        self.buffers.index_copy_(0, index, momenta)
        return vectors.copy_(momenta)

    def of(self, worker: int) -> Tensor | None:
        """Worker ``worker``'s buffer (a view), None before the first update."""
        return None if self.buffers is None else self.buffers[self._position[worker]]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the buffers (n, d) in worker order, or None."""
        return {"buffers": None if self.buffers is None else self.buffers.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffers = state["buffers"]
        if buffers is not None and buffers.shape[0] != len(self.workers):
            raise ValueError(f"worker momentum: the checkpoint holds {buffers.shape[0]} "
                             f"buffers, this process keeps {len(self.workers)}")
        self.buffers = None if buffers is None else buffers.clone()
