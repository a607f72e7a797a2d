"""Worker-side momentum (engine/momentum.py; Karimireddy, He, Jaggi 2021; Farhadkhani et al.
2022): the update rule against a float64 loop over workers, buffers that belong to worker
identities when the Byzantine set is redrawn every round, attacks that read momenta, resume
with the numbers of an uninterrupted run, and the config's refusals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from byzsgd.cli import main
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.engine.momentum import WorkerMomentum
from byzsgd.engine.setup import build
from byzsgd.engine.simulator import Simulation
from byzsgd.experiment import run
from byzsgd.results import load_checkpoint, read_csv, read_json

BETA = 0.9
FAST = dict(dataset="synthetic", model="logreg", workers=6, byzantine=2, rounds=6,
            batch_size=16, lr=0.5, eval_every=3, eval_train_samples=200,
            worker_momentum=BETA)


def cfg(**changes) -> ExperimentConfig:
    return ExperimentConfig(**{**FAST, **changes})


def gradients(sim: Simulation, theta: torch.Tensor, t: int) -> torch.Tensor:
    """Every worker's honest gradient of round t at theta, (n, d), without momentum."""
    return sim.workers.vectors(theta, t, sim.step.lr_at(t)).clone()


# -- the update rule -------------------------------------------------------------------------

def test_momentum_rule_equals_a_float64_loop_over_workers():
    """Mean rule, no attack: theta_{t+1} = theta_t - lr mean_i m_i^t with
    m_i^t = beta m_i^{t-1} + (1 - beta) g_i^t, m_i^0 = 0, for 5 rounds."""
    sim = Simulation(build(cfg(byzantine=0, aggregator="mean")), Path("unused"))
    n = sim.cfg.workers
    theta64 = sim.theta.double().clone()
    m = [torch.zeros_like(theta64) for _ in range(n)]
    for t in range(5):
        g = gradients(sim, theta64.float(), t).double()
        for i in range(n):  # a plain loop over workers
            m[i] = BETA * m[i] + (1 - BETA) * g[i]
        theta64 = theta64 - sim.step.lr_at(t) * sum(m) / n
        sim.round(t)
        assert torch.allclose(sim.theta.double(), theta64, rtol=1e-5, atol=1e-6), t
        for i in range(n):
            assert torch.allclose(sim.momentum.of(i).double(), m[i], rtol=1e-5, atol=1e-7)
    # the momentum changed the trajectory (the test would not notice a missing update)
    plain = Simulation(build(cfg(byzantine=0, aggregator="mean", worker_momentum=0.0)),
                       Path("unused"))
    for t in range(5):
        plain.round(t)
    assert not torch.allclose(plain.theta, sim.theta, rtol=1e-3)


def test_buffers_follow_worker_identities_through_byzantine_rounds():
    """selection = random: a worker Byzantine in round t still updates its buffer with its
    honest gradient (the buffers equal a float64 loop over every worker at the run's own
    thetas), whatever the attack sends in its place."""
    sim = Simulation(build(cfg(aggregator="median", attack="ipm", selection="random")),
                     Path("unused"))
    n = sim.cfg.workers
    m = torch.zeros(n, sim.s.flat.d, dtype=torch.float64)
    byzantine = set()
    for t in range(6):
        g = gradients(sim, sim.theta, t).double()
        for i in range(n):
            m[i] = BETA * m[i] + (1 - BETA) * g[i]
        byzantine |= set(sim.adversary.draw(t).byzantine.tolist())
        sim.round(t)
        assert torch.allclose(sim.momentum.buffers.double(), m, rtol=1e-5, atol=1e-7), t
    assert len(byzantine) > 2  # the Byzantine set did move


def test_update_is_the_same_floats_one_row_at_a_time():
    """The simulator updates n rows at once, a distributed worker its own row: same floats."""
    g = torch.randn(4, 37, generator=torch.Generator().manual_seed(1))
    together = WorkerMomentum(0.7, range(4))
    alone = [WorkerMomentum(0.7, [i]) for i in range(4)]
    for t in range(3):
        x = g * (t + 1) - t
        rows = together.update(list(range(4)), x.clone())
        for i in range(4):
            assert torch.equal(alone[i].update([i], x[i:i + 1].clone())[0], rows[i])


# -- what the attacks see ----------------------------------------------------------------------

class Spy:
    """Wraps an attack; keeps the keywords of each call and the rows it returned."""

    def __init__(self, attack):
        self.attack = attack
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.attack, name)

    def __call__(self, **kwargs):
        rows = self.attack(**kwargs)
        self.calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v
                           for k, v in kwargs.items()} | {"rows": rows.clone()})
        return rows


@pytest.mark.parametrize("knowledge", ["omniscient", "own"])
def test_alie_reads_the_momenta(knowledge):
    """ALIE's mu + z sigma is computed from the honest workers' momenta (omniscient) or the
    Byzantine workers' own momenta (own), not from their gradients."""
    config = cfg(aggregator="median", attack="alie", knowledge=knowledge,
                 attack_params={"z": 1.0})
    sim = Simulation(build(config), Path("unused"))
    sim.adversary.attack = spy = Spy(sim.adversary.attack)
    n = sim.cfg.workers
    m = torch.zeros(n, sim.s.flat.d, dtype=torch.float64)
    for t in range(4):
        g = gradients(sim, sim.theta, t).double()
        m = BETA * m + (1 - BETA) * g
        byz = sim.adversary.draw(t).byzantine
        honest = torch.ones(n, dtype=torch.bool)
        honest[byz] = False
        source = m[honest] if knowledge == "omniscient" else m[byz]
        sim.round(t)
        mu, sigma = source.mean(dim=0), source.std(dim=0)
        expected = mu + sigma
        rows = spy.calls[-1]["rows"].double()
        assert torch.allclose(rows, expected.expand_as(rows), rtol=1e-4, atol=1e-6), t
        gsource = g[honest] if knowledge == "omniscient" else g[byz]
        from_gradients = gsource.mean(dim=0) + gsource.std(dim=0)
        assert not torch.allclose(rows[0], from_gradients, rtol=1e-2), t
        if knowledge == "omniscient":
            assert torch.allclose(spy.calls[-1]["honest"].double(), m[honest], rtol=1e-5,
                                  atol=1e-7)
            assert spy.calls[-1]["own"] is None
        else:
            assert torch.allclose(spy.calls[-1]["own"].double(), m[byz], rtol=1e-5,
                                  atol=1e-7)


# -- resume -------------------------------------------------------------------------------------

RESUME = dict(FAST, workers=5, byzantine=1, rounds=30, eval_every=10, aggregator="median",
              attack="alie", selection="random")


def _flags(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


def _same_rows(a: Path, b: Path) -> None:
    for name in ("metrics.csv", "rounds.csv"):
        rows_a, rows_b = (
            [{k: v for k, v in r.items() if k != "rounds_per_s"} for r in read_csv(x / name)]
            for x in (a, b))
        assert rows_a == rows_b, name


def test_checkpoint_holds_the_buffers_and_resume_equals_uninterrupted(tmp_path):
    whole = tmp_path / "whole"
    run(ExperimentConfig(**RESUME), whole)
    state = load_checkpoint(whole / "checkpoint.pt")
    assert state["workers"]["momentum"].shape == (5, state["theta"].numel())

    class Stop(Exception):
        pass

    def stop(done, _):
        if done == 17:
            raise Stop

    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        Simulation(build(ExperimentConfig(**RESUME)), cut).run(progress=stop)
    run(ExperimentConfig(**RESUME), cut, resume=True)
    _same_rows(whole, cut)
    assert torch.equal(load_checkpoint(cut / "checkpoint.pt")["workers"]["momentum"],
                       state["workers"]["momentum"])
    # the buffers matter: a resume that forgot them would give other numbers
    lost = tmp_path / "lost"
    with pytest.raises(Stop):
        Simulation(build(ExperimentConfig(**RESUME)), lost).run(progress=stop)
    saved = load_checkpoint(lost / "checkpoint.pt")
    saved["workers"]["momentum"] = torch.zeros_like(saved["workers"]["momentum"])
    torch.save(saved, lost / "checkpoint.pt")
    run(ExperimentConfig(**RESUME), lost, resume=True)
    assert read_csv(lost / "rounds.csv")[-1] != read_csv(whole / "rounds.csv")[-1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_and_resume_give_the_uninterrupted_floats(tmp_path):
    values = dict(RESUME, rounds=200, eval_every=5, dataset="mnist-5k", model="mlp",
                  batch_size=32, lr=0.1, eval_train_samples=100)
    whole = tmp_path / "whole"
    assert main(["run", "--out", str(whole), "--quiet", *_flags(values)]) == 0
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "byzsgd.cli", "run", "--out", str(cut), "--quiet",
           *_flags(values)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 200
    rows = cut / "rounds.csv"
    while proc.poll() is None and time.monotonic() < deadline and not (
            rows.exists() and rows.read_text().count("\n") > 12):
        time.sleep(0.01)  # kill after round 12: past the checkpoints of rounds 5 and 10
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert read_json(cut / "summary.json")["status"] == "running"
    assert 10 <= len(read_csv(cut / "rounds.csv")) < 200
    assert load_checkpoint(cut / "checkpoint.pt")["workers"]["momentum"] is not None
    assert main(["run", "--out", str(cut), "--quiet", "--resume", *_flags(values)]) == 0
    _same_rows(whole, cut)


# -- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1.0, 1, -0.1, float("nan"), float("inf"), "x", True])
def test_config_refuses_bad_betas_naming_the_field(value):
    with pytest.raises(ConfigError, match="worker_momentum must be a float in "
                                          r"\[0, 1\)"):
        cfg(worker_momentum=value).validate()


def test_config_refuses_model_averaging_and_keeps_old_records():
    with pytest.raises(ConfigError, match=r"worker_momentum=0\.5 needs mode = gradient"):
        cfg(worker_momentum=0.5, mode="model-averaging").validate()
    assert "worker_momentum" not in cfg(worker_momentum=0.0).to_dict()
    assert cfg().to_dict()["worker_momentum"] == BETA
    assert ExperimentConfig.from_dict(cfg().to_dict()).worker_momentum == BETA
    assert Simulation(build(cfg(worker_momentum=0.0)), Path("unused")).momentum is None


def test_the_flag_sets_the_field(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--dataset", "synthetic", "--model", "logreg", "--workers", "4",
                 "--byzantine", "0", "--rounds", "2", "--eval-every", "2",
                 "--eval-train-samples", "50", "--worker-momentum", "0.5", "--out", str(out),
                 "--quiet"]) == 0
    assert read_json(out / "summary.json")["config"]["worker_momentum"] == 0.5
    assert main(["run", "--dataset", "synthetic", "--worker-momentum", "1", "--out",
                 str(tmp_path / "bad"), "--quiet"]) == 2
    assert "worker_momentum" in capsys.readouterr().err

