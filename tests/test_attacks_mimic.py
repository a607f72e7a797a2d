"""Mimic (Karimireddy, He, Jaggi, ICLR 2022): the heuristic on a worked example, the warm-up
estimates against a plain float64 reference with an explicit covariance matrix, the frozen
target followed by worker, state through a checkpoint, hostile rows and checks."""

from __future__ import annotations

import pytest
import torch

from byzsgd import attacks as A
from byzsgd.config import ExperimentConfig
from byzsgd.engine.setup import build
from byzsgd.engine.simulator import Simulation
from byzsgd.experiment import run
from byzsgd.results import read_csv


def gen(seed):
    return torch.Generator().manual_seed(seed)


class Reference:
    """The attack's definition with the scatter matrix C formed explicitly (float64)."""

    def __init__(self, warmup):
        self.warmup, self.t, self.mu, self.z, self.target = warmup, 0, None, None, None

    def step(self, x, ids, generator):
        x = x.double()
        h, d = x.shape
        mean = sum(x[i] for i in range(h)) / h
        if self.t < self.warmup:
            if self.t == 0:
                self.mu = mean
                z = torch.randn(d, generator=generator, dtype=torch.float64)
            else:
                self.mu = (self.t * self.mu + mean) / (self.t + 1)
                z = self.z
            c = torch.zeros((d, d), dtype=torch.float64)
            for i in range(h):
                u = x[i] - self.mu
                c += torch.outer(u, u)
            cz = c @ z
            cz = cz / cz.norm()
            if self.t == 0:
                self.z = cz
            else:
                mixed = (self.t * self.z + cz) / (self.t + 1)
                self.z = mixed / mixed.norm()
            proj = [float(x[i] @ self.z) for i in range(h)]
            self.target = ids[max(range(h), key=lambda i: (proj[i], -i))]
        self.t += 1
        return x[ids.index(self.target)] if self.target in ids else None


def test_worked_example_top_direction():
    """Honest vectors +-3 e_1 and +-e_2 around (5, 5): C = diag(18, 2), so after one power
    step z is within a few degrees of +-e_1 and the target is the worker at +-3 e_1 on z's
    side."""
    x = torch.tensor([[8.0, 5.0], [2.0, 5.0], [5.0, 6.0], [5.0, 4.0]], dtype=torch.float64)
    attack = A.get("mimic", warmup=1)
    rows = attack(honest=x, f=2, generator=gen(0))
    z0 = torch.randn(2, generator=gen(0), dtype=torch.float64)
    target = 0 if float(z0[0]) > 0 else 1
    assert attack.target == target
    assert abs(float(attack.z[0])) > 0.95
    torch.testing.assert_close(rows, x[target].expand(2, 2))


def test_warmup_matches_the_reference_and_then_freezes():
    d, h, warmup = 6, 5, 4
    attack, ref = A.get("mimic", warmup=warmup), Reference(warmup)
    g = gen(11)
    for t in range(9):
        x = torch.randn((h, d), generator=g, dtype=torch.float64) * (1 + torch.arange(d)) + 1.0
        ids = list(range(h))
        want = ref.step(x, ids, gen(100 + t))
        got = attack(honest=x, f=3, generator=gen(100 + t), honest_ids=torch.tensor(ids))
        assert attack.t == ref.t and attack.target == ref.target, t
        torch.testing.assert_close(attack.z, ref.z)
        torch.testing.assert_close(attack.mu, ref.mu)
        torch.testing.assert_close(got, want.expand(3, -1))


def test_the_frozen_target_is_followed_by_worker_not_by_row():
    attack = A.get("mimic", warmup=1)
    x = torch.randn((5, 8), generator=gen(0), dtype=torch.float64)
    attack(honest=x, f=2, generator=gen(1), honest_ids=torch.tensor([0, 1, 2, 3, 4]))
    target = attack.target
    z = attack.z.clone()
    # next round: other vectors, the rows in another order, workers 5..9 named
    y = torch.randn((5, 8), generator=gen(2), dtype=torch.float64)
    ids = torch.tensor([4, 3, 2, 1, 0])
    rows = attack(honest=y, f=2, generator=gen(3), honest_ids=ids)
    row = int((ids == target).nonzero())
    torch.testing.assert_close(rows, y[row].expand(2, -1))
    assert torch.equal(attack.z, z) and attack.target == target  # frozen
    # the target is Byzantine this round: the honest row with the largest <x, z>
    others = torch.tensor([i for i in range(6) if i != target][:5])
    rows = attack(honest=y, f=2, generator=gen(3), honest_ids=others)
    torch.testing.assert_close(rows, y[int(torch.argmax(y @ z))].expand(2, -1))
    assert attack.target == target
    # the target's row holds a NaN: dropped, the finite row with the largest <x, z> instead
    bad = y.clone()
    bad[row, 3] = float("nan")
    rows = attack(honest=bad, f=2, generator=gen(3), honest_ids=ids)
    finite = torch.tensor([i for i in range(5) if i != row])
    best = finite[int(torch.argmax(y[finite] @ z))]
    torch.testing.assert_close(rows, y[best].expand(2, -1))
    assert attack.target == target


def test_state_dict_round_trip_continues_the_same_sequence():
    xs = [torch.randn((6, 10), generator=gen(s), dtype=torch.float64) for s in range(7)]
    whole = A.get("mimic", warmup=3)
    outs = [whole(honest=x, f=2, generator=gen(50 + i)) for i, x in enumerate(xs)]
    first = A.get("mimic", warmup=3)
    for i, x in enumerate(xs[:2]):
        first(honest=x, f=2, generator=gen(50 + i))
    second = A.get("mimic", warmup=3)
    second.load_state_dict(first.state_dict())
    for i, x in enumerate(xs[2:], start=2):
        torch.testing.assert_close(second(honest=x, f=2, generator=gen(50 + i)), outs[i])
    second.reset()
    assert second.t == 0 and second.z is None


def test_checks_and_hostile_rows():
    with pytest.raises(ValueError, match=r"mimic: warmup must be an int in \[1, inf\)"):
        A.get("mimic", warmup=0)
    with pytest.raises(ValueError, match="knowledge"):
        A.get("mimic", knowledge="own")
    x = torch.randn((5, 4), generator=gen(0))
    attack = A.get("mimic")
    with pytest.raises(ValueError, match="honest_ids must name one worker per honest row"):
        attack(honest=x, f=1, honest_ids=torch.tensor([0, 1]))
    attack(honest=x, f=1, generator=gen(0))
    with pytest.raises(ValueError, match="dimension 4, got vectors of dimension 3"):
        attack(honest=x[:, :3], f=1)
    with pytest.raises(ValueError, match="state lacks"):
        attack.load_state_dict({"t": 1})
    bad = x.clone()
    bad[1, 2] = float("nan")
    rows = A.get("mimic")(honest=bad, f=2, generator=gen(0))
    assert bool(torch.isfinite(rows).all())
    ok = A.get("mimic")(honest=x[torch.tensor([0, 2, 3, 4])], f=2, generator=gen(0))
    torch.testing.assert_close(rows, ok)


FAST = dict(dataset="synthetic", model="logreg", workers=11, byzantine=3, rounds=12,
            batch_size=16, lr=0.5, eval_every=4, eval_train_samples=200, aggregator="median",
            attack="mimic", attack_params={"warmup": 6})


class _Stop(Exception):
    pass


def test_resume_carries_the_attack_state(tmp_path):
    """A run cut inside the warm-up and resumed ends with the numbers of the whole run: the
    checkpoint holds mu, z, t and the target."""
    config = ExperimentConfig(**FAST)
    run(config, tmp_path / "whole")

    def interrupt(done, _):
        if done == 5:
            raise _Stop

    sim = Simulation(build(config), tmp_path / "cut")
    with pytest.raises(_Stop):
        sim.run(progress=interrupt)
    run(config, tmp_path / "cut", resume=True)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "rounds_per_s"} for r in rows]  # noqa: E731
    assert drop(read_csv(tmp_path / "cut" / "metrics.csv")) == drop(
        read_csv(tmp_path / "whole" / "metrics.csv"))
