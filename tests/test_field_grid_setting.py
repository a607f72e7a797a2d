"""The field grid's setting (experiments/field-rules-attacks.toml): the workers' momentum of
Allouah et al. 2023 (no server momentum), read by every attack of the grid, and a centered
clipping radius that clips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from byzsgd import reproduce
from byzsgd.config import ExperimentConfig
from byzsgd.engine.setup import build
from byzsgd.engine.simulator import Simulation

EXPERIMENTS = reproduce.repo_root() / "experiments"
FIELD = reproduce.load("field-rules-attacks", EXPERIMENTS)
GRID = reproduce.points(FIELD)
GRID_ATTACKS = list(dict.fromkeys(p.config.attack for p in GRID))
BETA = 0.9


def test_every_run_has_the_workers_momentum_and_no_server_momentum() -> None:
    assert {(p.config.momentum, p.config.worker_momentum) for p in GRID} == {(0.0, BETA)}
    assert "worker momentum 0.9" in FIELD.info["setting"]
    assert "server momentum" not in FIELD.info["setting"].replace("no server momentum", "")


def test_centered_clipping_runs_get_the_files_radius_whatever_the_pre_aggregation() -> None:
    runs = [p.config for p in GRID if p.config.aggregator == "centered-clipping"]
    assert {tuple(c.pre_aggregators) for c in runs} == {(), ("nnm",), ("bucketing",)}
    taus = {c.aggregator_params.get("tau") for c in runs}
    assert len(taus) == 1 and next(iter(taus)) < 100  # 100, the default, never clips here
    assert all(not p.config.aggregator_params for p in GRID
               if p.config.aggregator != "centered-clipping")
    # and the same radius, wherever it comes from, reaches the bound rule
    setup = build(runs[0].replace(dataset="synthetic", data_dir=None, rounds=1))
    assert setup.server.rule.params.get("tau") == next(iter(taus))


class Spy:
    """Records what the attack is called with."""

    def __init__(self, attack):
        self.attack = attack
        self.calls: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.attack, name)

    def __call__(self, **kwargs):
        self.calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v
                           for k, v in kwargs.items()})
        return self.attack(**kwargs)


@pytest.mark.parametrize("attack", [a for a in GRID_ATTACKS if a != "none"])
def test_every_attack_of_the_grid_reads_the_momenta(attack: str) -> None:
    """The honest rows an attack is given (and the Byzantine workers' own, when it reads
    them) are the workers' momenta m = beta m + (1 - beta) g (a float64 loop), not their
    gradients, with the grid's attack parameters; the Byzantine set is redrawn every round,
    so a worker's buffer carries what it sent while Byzantine (label flipping: gradients of
    flipped labels) into its honest rounds."""
    grid_cfg = next(p.config for p in GRID if p.config.attack == attack)
    config = ExperimentConfig(dataset="synthetic", model="logreg", workers=9, byzantine=2,
                              rounds=4, batch_size=16, lr=0.5, eval_every=4,
                              eval_train_samples=50, aggregator="median", attack=attack,
                              attack_params=grid_cfg.attack_params, momentum=0.0,
                              worker_momentum=BETA)
    sim = Simulation(build(config), Path("unused"))
    sim.adversary.attack = spy = Spy(sim.adversary.attack)
    n = config.workers
    m = torch.zeros(n, sim.s.flat.d, dtype=torch.float64)
    for t in range(4):
        byz = sim.adversary.draw(t).byzantine
        flips = sim.adversary.label_map()  # a data attack's workers train on its labels
        g = sim.workers.vectors(sim.theta, t, sim.step.lr_at(t),
                                flip=byz if flips is not None else None,
                                label_map=flips).clone().double()
        m = BETA * m + (1 - BETA) * g
        honest = torch.ones(n, dtype=torch.bool)
        honest[byz] = False
        sim.round(t)
        call = spy.calls[-1]
        assert torch.allclose(call["honest"].double(), m[honest], rtol=1e-5, atol=1e-7), t
        assert not torch.allclose(call["honest"].double(), g[honest], rtol=1e-2), t
        if call.get("own") is not None:  # the Byzantine workers' own momenta
            assert torch.equal(call["own"], sim.momentum.buffers[byz]), t
    assert len(spy.calls) == 4
