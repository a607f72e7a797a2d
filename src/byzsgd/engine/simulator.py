"""Synchronous parameter-server SGD with Byzantine workers, simulated in one process.

:class:`Simulation` calls :func:`~byzsgd.engine.round.round_` (the round, top to bottom) for
t = 0, 1, ...; a :class:`~byzsgd.engine.recorder.Recorder` runs it, evaluating every
``eval_every`` rounds, writing metrics, checkpoints and the summary.

Every random draw of round t derives from (seed, t), so a resumed run ends with the same
numbers as an uninterrupted one. The run computes on its config's device (:mod:`.placement`);
summary.json records the device used (``"cuda:0"`` for ``auto`` on a GPU machine), and a
checkpoint holds CPU tensors, so that a run resumes on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from byzsgd.engine.placement import CPU, to_device
from byzsgd.engine.recorder import METRIC_COLUMNS, ROUND_COLUMNS, Recorder
from byzsgd.engine.round import Workspace, round_
from byzsgd.engine.setup import Setup, build

__all__ = ["METRIC_COLUMNS", "ROUND_COLUMNS", "Setup", "Simulation", "build"]


class Simulation:
    """The rounds of one run in one process: theta and the server's momentum buffer, carried
    from round to round; a :class:`~byzsgd.engine.recorder.Recorder` runs them and writes the
    results under ``out`` (as it does the distributed lead server's)."""

    def __init__(self, setup: Setup, out: Path) -> None:
        self.s = setup
        self.cfg = setup.config
        self.out = out
        self.theta = setup.flat.initial()
        self.buffer: Tensor | None = None  # the server's momentum buffer
        self.workers = setup.workers()
        self.adversary = setup.adversary()
        self.server = setup.server
        self.step = setup.step()
        self.momentum = setup.momentum()  # the workers' momentum buffers (None: off)
        self.workspace = Workspace(self.cfg.workers, setup.flat.d, self.theta.dtype,
                                   setup.device)

    def lr(self, t: int) -> float:
        return self.step.lr_at(t)

    def round(self, t: int) -> dict[str, float]:
        """Round t (:func:`~byzsgd.engine.round.round_`); its rounds.csv row."""
        self.theta, self.buffer, record = round_(
            t, self.theta, self.buffer, workers=self.workers, adversary=self.adversary,
            server=self.server, step=self.step, workspace=self.workspace,
            momentum=self.momentum)
        return record

    def evaluate(self) -> dict[str, float]:
        return self.s.evaluate(self.theta)

    # -- what the recorder asks ------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The training state a checkpoint holds (besides the loop's own counters): the
        rule's state across rounds (centered clipping) and the attack's (mimic), when they
        have one, and the workers' momentum buffers when on (``workers``); on the CPU."""
        state = {"theta": self.theta,
                 "server": {"buffer": self.buffer, **self.s.server.rule_state()}}
        if self.momentum is not None:
            state["workers"] = {"momentum": self.momentum.state_dict()["buffers"]}
        attack = self.adversary.attack
        if hasattr(attack, "state_dict"):
            state["attack"] = attack.state_dict()
        return to_device(state, CPU)

    def begin(self, state: dict[str, Any] | None, start: int) -> None:
        """Before round ``start``: from the checkpoint's ``state`` when resuming."""
        if state is not None:
            state = to_device(state, self.s.device)
            self.theta = state["theta"]
            self.buffer = state["server"]["buffer"]
            self.s.server.load_rule_state(state["server"])
            attack = self.adversary.attack
            if "attack" in state and hasattr(attack, "load_state_dict"):
                attack.load_state_dict(state["attack"])
            if self.momentum is not None:
                self.momentum.load_state_dict(
                    {"buffers": state.get("workers", {}).get("momentum")})

    def report(self) -> dict[str, Any]:
        """Entries added to summary.json: the device the run computed on."""
        return {"device": self.s.device_name}

    # -- the run -----------------------------------------------------------------------------

    def run(self, *, resume: bool = False, overwrite: bool = False,
            progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """All rounds, writing the run's files under ``out`` (:mod:`.recorder`); returns the
        summary."""
        recorder = Recorder(self.out, self.cfg, d=self.s.flat.d, epoch=self.s.sampler.epoch,
                            lr=self.lr)
        return recorder.run(self, resume=resume, overwrite=overwrite, progress=progress)
