"""Synchronous parameter-server SGD with Byzantine workers, simulated in one process.

One round t (Algorithm 1 of Fall of Empires and of Generalized Byzantine-tolerant SGD; in
``model-averaging`` mode Algorithm 1 of A Little Is Enough):

1. the server broadcasts theta_t; every worker draws its minibatch and computes its vector
   honestly: a gradient, or its parameters after local SGD steps (one batched call);
2. the threat model says which rows are Byzantine this round; the attack replaces them with
   what it builds from what it knows (generalized model: corrupts values anywhere);
3. the server aggregates with the rule and steps;
4. diagnostics of the round are logged; every ``eval_every`` rounds the model is evaluated,
   a metrics row is written and a checkpoint taken.

Every random draw of round t derives from (seed, t), so a resumed run ends with the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from byzsgd._memory import keep_freed_memory
from byzsgd.engine.recorder import METRIC_COLUMNS, ROUND_COLUMNS, Recorder
from byzsgd.engine.round import (
    corrupt,
    flips_labels,
    forge,
    honest_vectors,
    lr_of,
    reads_byzantine_vectors,
    round_diagnostics,
    round_threat,
)
from byzsgd.engine.setup import Setup, build
from byzsgd.metrics import byzantine_selected
from byzsgd.seeding import seed_round_dropout

__all__ = ["METRIC_COLUMNS", "ROUND_COLUMNS", "Setup", "Simulation", "build"]

class Simulation:
    """The rounds of one run in one process; a :class:`~byzsgd.engine.recorder.Recorder`
    runs them and writes the results under ``out`` (as it does the distributed lead
    server's)."""

    def __init__(self, setup: Setup, out: Path) -> None:
        keep_freed_memory()  # the round's large tensors are reused, not re-faulted
        self.s = setup
        self.cfg = setup.config
        self.out = out
        self.theta = setup.flat.initial()

    # -- one round ---------------------------------------------------------------------------

    def lr(self, t: int) -> float:
        return lr_of(self.s, t)

    def honest_vectors(self, t: int, flip: Tensor | None, rows: list[int] | None = None,
                       out: Tensor | None = None) -> Tensor:
        """What the workers ``rows`` (all when None) would send if honest: gradients at
        theta_t, or parameters after ``local_steps`` of local SGD (model averaging). ``flip``
        marks workers whose labels are poisoned by a data attack (label flipping). Written
        into ``out`` when given."""
        return honest_vectors(self.s, self.theta, t, flip, rows, out)

    def round(self, t: int) -> dict[str, float]:
        cfg, s = self.cfg, self.s
        seed_round_dropout(cfg.seed, t)
        attacked, byz, g = round_threat(s, t)
        honest_mask = torch.ones(cfg.workers, dtype=torch.bool)
        honest_mask[byz] = False
        honest_rows = honest_mask.nonzero().flatten()
        k = honest_rows.numel()
        # The received matrix holds the honest rows first (in worker order), then the
        # Byzantine ones: the workers' vectors are computed in place and read in place by the
        # attack, and its f rows forged in place. Every rule is invariant under a permutation
        # of its rows (tests/test_aggregators.py); the rows a rule selected are mapped back
        # to workers below.
        worker_of_row = torch.cat([honest_rows, byz])
        # The Byzantine workers' honest vectors only when the attack reads them (own
        # knowledge, label flipping, dimensional corruption): do not compute what nobody reads.
        computed = worker_of_row if not attacked or reads_byzantine_vectors(s) else honest_rows
        sent = torch.empty((cfg.workers, s.flat.d), dtype=self.theta.dtype)
        self.honest_vectors(t, byz if attacked and flips_labels(s) else None,
                            computed.tolist(), out=sent[:computed.numel()])
        honest = sent[:k]
        if attacked and s.attack.dimensional:
            sent = corrupt(s, sent, g)  # a corrupted copy: honest keeps the correct values
        elif attacked:
            own = sent[k:].clone() if computed.numel() > k else None
            forge(s, t, self.theta, g, honest=honest, own=own, f=byz.numel(),
                  n=cfg.workers, out=sent[k:])
        truth = honest.mean(dim=0)
        aggregate = s.server.aggregate(sent)
        lr = self.lr(t)
        diag = round_diagnostics(s, self.theta, truth, aggregate.value)
        if cfg.mode == "gradient":
            self.theta = s.server.step(self.theta, aggregate.value, lr)
        else:
            self.theta = aggregate.value.clone()
        selected = aggregate.selected
        if selected is not None:
            selected = [worker_of_row[rows] for rows in selected]
        return {"round": t, "lr": lr, "attacked": int(attacked), **diag,
                "byzantine_selected": byzantine_selected(selected, byz)}

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        return self.s.evaluate(self.theta)

    # -- what the recorder asks ------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The training state a checkpoint holds (besides the loop's own counters)."""
        return {"theta": self.theta, "server": self.s.server.state_dict()}

    def begin(self, state: dict[str, Any] | None, start: int) -> None:
        """Before round ``start``: from the checkpoint's ``state`` when resuming."""
        if state is not None:
            self.theta = state["theta"]
            self.s.server.load_state_dict(state["server"])

    def report(self) -> dict[str, Any]:
        """Entries added to summary.json (none here)."""
        return {}

    # -- the run -----------------------------------------------------------------------------

    def run(self, *, resume: bool = False, overwrite: bool = False,
            progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """All rounds, writing the run's files under ``out`` (:mod:`.recorder`); returns the
        summary."""
        recorder = Recorder(self.out, self.cfg, d=self.s.flat.d, epoch=self.s.sampler.epoch,
                            lr=self.lr)
        return recorder.run(self, resume=resume, overwrite=overwrite, progress=progress)
