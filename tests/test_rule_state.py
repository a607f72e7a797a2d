"""State that must survive: a stateful rule probed by an attack leaves the round as a round
without probing would (attacks/_base.py ``probing``), and the distributed runtime's checkpoints
carry the rule's and the attack's state (centered clipping's center, mimic's estimates and
chosen worker) and the workers' momenta, so that a killed and resumed run ends with the
numbers of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_distributed import assert_same_numbers, distributed

from byzsgd.aggregators import Aggregation
from byzsgd.aggregators.centered_clipping import centered_clipping_select
from byzsgd.attacks import get as get_attack
from byzsgd.config import ExperimentConfig
from byzsgd.engine.server import Server
from byzsgd.engine.setup import build
from byzsgd.engine.simulator import Simulation
from byzsgd.experiment import run
from byzsgd.results import load_checkpoint, read_csv, read_json

FAST = dict(dataset="synthetic", model="logreg", workers=7, byzantine=2, rounds=4,
            batch_size=16, lr=0.5, eval_every=2, eval_train_samples=200,
            aggregator="centered-clipping", aggregator_params={"tau": 0.05})


class Replay:
    """An attack that sends the rows it is given, round by round, without querying the rule:
    the round without probing."""

    name = "replay"
    dimensional = False
    knowledge = "omniscient"

    def __init__(self, rows: list[torch.Tensor]):
        self.rows = list(rows)

    def __call__(self, *, out, **_):
        return out.copy_(self.rows.pop(0))


class Recording:
    """Wraps an attack; keeps the rows it sent and how often it called the rule."""

    def __init__(self, attack):
        self.attack = attack
        self.rows: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self.attack, name)

    def __call__(self, **kwargs):
        rows = self.attack(**kwargs)
        self.rows.append(rows.clone())
        return rows


class NaiveCentered:
    """Centered clipping written the naive way: ``select`` moves the center to its own
    output on every call (a plugin rule with state; the protocol's ``state_dict`` /
    ``load_state_dict`` expose it). Probing it 20 times a round moves it 20 times."""

    name = "naive-centered"
    selects_rows = False

    def __init__(self, f: int, tau: float):
        self.f, self.tau = f, tau
        self.center: torch.Tensor | None = None
        self.calls = 0

    def select(self, gradients):
        self.calls += 1
        value = centered_clipping_select(gradients, self.f, tau=self.tau,
                                         center=self.center).value
        self.center = value.clone()
        return Aggregation(value)

    def __call__(self, gradients):
        return self.select(gradients).value

    def state_dict(self):
        return {"center": None if self.center is None else self.center.clone()}

    def load_state_dict(self, state):
        self.center = state["center"]


def _pair(config: ExperimentConfig, rule_factory=None) -> tuple[Simulation, Simulation]:
    """Two simulations of ``config``: the first runs the attack (probing the rule), the
    second replays its rows (no probing); with ``rule_factory``, each deploys its own
    instance of that rule."""
    a, b = (Simulation(build(config), Path("unused")) for _ in range(2))
    if rule_factory is not None:
        for sim in (a, b):
            sim.server = Server(rule_factory(), sim.s.flat.d)
    a.adversary.attack = Recording(a.adversary.attack)
    return a, b


@pytest.mark.parametrize("attack", ["optimal-alie", "optimal-ipm"])
def test_probing_a_stateful_plugin_rule_leaves_no_trace(attack):
    """Fails without the snapshot/restore around the attack: the naive rule's center would be
    the output of the attack's last probe instead of the round's aggregate."""
    config = ExperimentConfig(**FAST, attack=attack)
    a, b = _pair(config, lambda: NaiveCentered(2, 0.05))
    rows: list[torch.Tensor] = []
    for t in range(4):
        a.round(t)
        rows.append(a.adversary.attack.rows[-1])
        b.adversary.attack = Replay(rows[-1:])
        b.round(t)
        assert a.server.rule.calls > b.server.rule.calls  # a's attack did probe it
        assert torch.equal(a.server.rule.center, b.server.rule.center), t
        assert torch.equal(a.theta, b.theta), t


def test_optimal_alie_against_centered_clipping_leaves_the_state_of_a_round_without_probing():
    """The library's centered clipping (a Chain: pure ``select``, ``commit`` by the server)
    after optimal-alie probed it up to 20 times a round: the same center and round counter as
    after a round whose attack sent the same rows without probing."""
    config = ExperimentConfig(**FAST, attack="optimal-alie")
    a, b = _pair(config)
    for t in range(4):
        a.round(t)
        assert a.adversary.attack.last_evals >= 2
        b.adversary.attack = Replay(a.adversary.attack.rows[-1:])
        b.round(t)
        sa, sb = a.server.rule.state_dict(), b.server.rule.state_dict()
        assert sa["round"] == sb["round"] == t + 1
        assert torch.equal(sa["center"], sb["center"]), t


def test_the_snapshot_is_restored_even_when_the_attack_fails():
    rule = NaiveCentered(1, 1.0)
    rule.center = torch.zeros(3)
    attack = get_attack("optimal-alie", evals=3)
    honest = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    attack(honest=honest, f=1, rule=rule)
    assert rule.calls >= 2 and torch.equal(rule.center, torch.zeros(3))
    honest[:] = float("nan")
    with pytest.raises(ValueError):
        attack(honest=honest, f=1, rule=rule)
    assert torch.equal(rule.center, torch.zeros(3))


# -- distributed checkpoints ----------------------------------------------------------------------

DIST = dict(dataset="synthetic", model="logreg", workers=4, byzantine=1, rounds=9,
            batch_size=16, lr=0.5, eval_every=3, eval_train_samples=500,
            aggregator="centered-clipping", aggregator_params={"tau": 0.5}, attack="mimic",
            attack_params={"warmup": 4}, selection="random", worker_momentum=0.9)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("servers", [1, 2])
def test_a_killed_distributed_run_with_state_resumes_with_the_uninterrupted_numbers(
        tmp_path, servers):
    """Centered clipping (center), mimic (estimates, chosen worker: random selection, so
    the state moves between worker processes through server 0) and worker momentum: killed
    at round 5 (after the round-3 checkpoint, inside mimic's warm-up), resumed, the
    simulator's numbers; the checkpoints hold the same state as the simulator's."""
    config = ExperimentConfig(**DIST, servers=servers)
    run(config, tmp_path / "sim")
    out = tmp_path / "dist"
    first = distributed(config, out, fault="kill:server=0:round=5", timeout=180)
    assert first.returncode != 0 and "server 0 exited" in first.stderr, first.stderr[-3000:]
    assert read_json(out / "summary.json")["status"] == "running"
    cut = load_checkpoint(out / "checkpoint.pt")
    assert cut["round"] == 3 and cut["server"]["rule"]["round"] == 3
    assert cut["attack"]["t"] == 3 and cut["workers"]["momentum"].shape[0] == 4
    second = distributed(config, out, "--resume", timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(read_csv(out / "rounds.csv")) == 9
    assert_same_numbers(tmp_path / "sim", out, rtol=1e-5)
    sim, dist = (load_checkpoint(tmp_path / x / "checkpoint.pt") for x in ("sim", out))
    assert torch.allclose(sim["theta"], dist["theta"], atol=1e-6)
    assert sim["server"]["rule"]["round"] == dist["server"]["rule"]["round"] == 9
    assert torch.allclose(sim["server"]["rule"]["center"], dist["server"]["rule"]["center"],
                          atol=1e-6)
    assert sim["attack"]["target"] == dist["attack"]["target"]
    assert sim["attack"]["t"] == dist["attack"]["t"]
    assert torch.allclose(sim["workers"]["momentum"], dist["workers"]["momentum"], atol=1e-6)
