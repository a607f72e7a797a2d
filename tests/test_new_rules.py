"""Centered clipping, DnC and RFA: worked examples from the papers' definitions, float64 loop
references, hostile rows, permutation invariance, parameter checks, and centered clipping's
state through the server, a checkpoint and a resumed run."""

from __future__ import annotations

import math

import pytest
import torch
from hostile_inputs import F32MAX, HOSTILE, gen, honest_and_hostile

from byzsgd import aggregators as A
from byzsgd.aggregators.preaggregation import arc, bucketing, clipping, nnm
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.engine.server import Server
from byzsgd.engine.simulator import Simulation, build
from byzsgd.experiment import run
from byzsgd.results import read_csv

# --- references (float64 loops) ---------------------------------------------------------------

def ref_cc(x, tau, iters, center=None):
    x = x.double()
    n = x.shape[0]
    v = torch.zeros(x.shape[1], dtype=torch.float64) if center is None else center.double()
    for _ in range(iters):
        step = torch.zeros_like(v)
        for i in range(n):
            diff = x[i] - v
            norm = float(diff.norm())
            step += diff * min(1.0, tau / norm) if norm > 0 else diff
        v = v + step / n
    return v


def ref_dnc(x, f, c, coords):
    x = x.double()
    n = x.shape[0]
    sub = x[:, coords]
    mu = sub.mean(dim=0)
    v = torch.linalg.svd(sub - mu).Vh[0]
    scores = [float(((sub[i] - mu) @ v) ** 2) for i in range(n)]
    keep = sorted(range(n), key=lambda i: (scores[i], i))[: n - math.floor(c * f)]
    return x[sorted(keep)].mean(dim=0), sorted(keep)


def ref_rfa(x, nu, iters, start):
    x = x.double()
    v = start.double()
    for _ in range(iters):
        beta = [1.0 / max(nu, float((v - row).norm())) for row in x]
        v = sum(b * row for b, row in zip(beta, x, strict=True)) / sum(beta)
    return v


# --- centered clipping ------------------------------------------------------------------------

def test_centered_clipping_worked_example():
    x = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    # around 0 with tau = 2: differences 0, 1, 10 clipped to 0, 1, 2 -> v = (0 + 1 + 2)/3 = 1
    assert float(A.centered_clipping(x, 1, tau=2.0)) == pytest.approx(1.0)
    # a second iteration around 1: differences -1, 0, 9 clipped to -1, 0, 2 -> 1 + 1/3
    assert float(A.centered_clipping(x, 1, tau=2.0, iters=2)) == pytest.approx(4 / 3)
    # around the previous aggregate 9: differences -9, -8, 1 -> -2, -2, 1 -> 9 - 1
    center = torch.tensor([9.0], dtype=torch.float64)
    assert float(A.aggregate("centered-clipping", x, 1, tau=2.0, center=center).value) == \
        pytest.approx(8.0)


@pytest.mark.parametrize("tau,iters", [(0.5, 1), (2.0, 3), (100.0, 1)])
def test_centered_clipping_matches_the_loop(tau, iters):
    x = torch.randn(9, 20, generator=gen(1), dtype=torch.float64) + 1.0
    center = torch.randn(20, generator=gen(2), dtype=torch.float64)
    got = A.aggregate("centered-clipping", x, 2, tau=tau, iters=iters, center=center).value
    torch.testing.assert_close(got, ref_cc(x, tau, iters, center))
    torch.testing.assert_close(A.centered_clipping(x.float(), 2, tau=tau, iters=iters).double(),
                               ref_cc(x, tau, iters), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", HOSTILE)
def test_centered_clipping_bounds_hostile_rows(value):
    n, f, tau = 11, 3, 1.0
    x = honest_and_hostile(value, n, f)
    got = A.centered_clipping(x, f, tau=tau).double()
    assert torch.isfinite(got).all()
    # the honest rows' part of the step, exactly; each hostile row adds at most tau / n
    honest_part = ref_cc(x[: n - f], tau, 1) * (n - f) / n
    assert float((got - honest_part).norm()) <= f * tau / n * (1 + 1e-5)


def test_centered_clipping_parameters_and_permutations():
    x = torch.randn(7, 5, generator=gen(3))
    perm = torch.randperm(7, generator=gen(4))
    torch.testing.assert_close(A.centered_clipping(x[perm], 2, tau=0.5),
                               A.centered_clipping(x, 2, tau=0.5))
    with pytest.raises(ValueError, match=r"^centered-clipping: tau must be a float in \(0, inf\), "
                                         r"got 0$"):
        A.check("centered-clipping", 7, 2, tau=0)
    with pytest.raises(ValueError, match=r"^centered-clipping: iters must be an int in \[1, "):
        A.check("centered-clipping", 7, 2, iters=0)
    with pytest.raises(ValueError, match=r"^centered-clipping needs n >= 2f \+ 1"):
        A.check("centered-clipping", 7, 4)
    with pytest.raises(ValueError, match="center is set by the bound rule"):
        A.bind("centered-clipping", 2, center=torch.zeros(5))
    with pytest.raises(ConfigError, match=r"^aggregator: centered-clipping: center is set by"):
        ExperimentConfig(dataset="synthetic", model="logreg", workers=7, byzantine=2,
                         aggregator="centered-clipping",
                         aggregator_params={"center": torch.zeros(3)}).validate()


def test_centered_clipping_state_is_the_previous_aggregate():
    x1 = torch.randn(7, 6, generator=gen(5))
    x2 = torch.randn(7, 6, generator=gen(6)) + 3.0
    rule = A.bind("centered-clipping", 2, tau=0.5)
    assert isinstance(rule, A.Chain)
    v1 = rule(x1)
    assert torch.equal(rule(x1), v1)  # select leaves the state alone (attackers query it)
    rule.commit(v1)
    v2 = rule(x2)
    torch.testing.assert_close(v2, A.aggregate("centered-clipping", x2, 2, tau=0.5,
                                                center=v1).value)
    saved = rule.state_dict()
    fresh = A.bind("centered-clipping", 2, tau=0.5)
    assert not torch.equal(fresh(x2), v2)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh(x2), v2)


def test_server_commits_the_state_and_sharded_servers_read_their_columns():
    x = [torch.randn(7, 10, generator=gen(s)) for s in range(3)]
    two = Server(A.bind("centered-clipping", 2, tau=0.3), 10, servers=2)
    for xt in x[:2]:
        two.aggregate(xt)
    center = two.state_dict()["rule"]["center"]
    assert two.state_dict()["rule"]["round"] == 2 and center.shape == (10,)
    expected = torch.cat([A.aggregate("centered-clipping", x[2][:, a:b], 2, tau=0.3,
                                      center=center[a:b]).value for a, b in ((0, 5), (5, 10))])
    assert torch.equal(two.aggregate(x[2]).value, expected)
    assert torch.equal(two.state_dict()["rule"]["center"], expected)


# --- DnC --------------------------------------------------------------------------------------

def test_dnc_worked_example():
    # all coordinates (b >= d); mean (2, 0.02); the top direction is the first axis; scores
    # (x_1 - 2)^2 = 4, 1, 9, 4, 64 (to first order): c f = 1 removed, the row at 10
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 0.1], [10.0, 0.0]],
                     dtype=torch.float64)
    result = A.aggregate("dnc", x, 1)
    assert result.selected.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(result.value, torch.tensor([0.0, 0.025], dtype=torch.float64))


@pytest.mark.parametrize("n,f,c", [(11, 3, 1.0), (15, 4, 1.5), (9, 2, 0.0)])
def test_dnc_matches_the_loop(n, f, c):
    x = torch.randn(n, 40, generator=gen(n), dtype=torch.float64)
    x[:f] += 2.0 * torch.randn(40, generator=gen(99), dtype=torch.float64)
    got = A.aggregate("dnc", x, f, c=c, b=40)
    value, keep = ref_dnc(x, f, c, torch.arange(40))
    assert got.selected.tolist() == keep
    torch.testing.assert_close(got.value, value)
    # b < d: the coordinates the seeded generator draws
    got = A.aggregate("dnc", x, f, c=c, b=10, generator=gen(3))
    coords = torch.randperm(40, generator=gen(3))[:10].sort().values
    assert got.selected.tolist() == ref_dnc(x, f, c, coords)[1]


@pytest.mark.parametrize("value", HOSTILE)
def test_dnc_removes_hostile_rows(value):
    n, f = 11, 3
    x = honest_and_hostile(value, n, f)
    result = A.aggregate("dnc", x, f)
    assert result.selected.tolist() == list(range(n - f))
    torch.testing.assert_close(result.value, x[: n - f].mean(dim=0))
    # one of each at once (float32 max dominates the mean; the 1e20 row is still removed)
    x[n - 3], x[n - 2], x[n - 1] = float("nan"), F32MAX, -1e20
    assert A.aggregate("dnc", x, f).selected.tolist() == list(range(n - f))


def test_dnc_parameters_permutations_and_seeding():
    x = torch.randn(11, 30, generator=gen(4))
    perm = torch.randperm(11, generator=gen(5))
    torch.testing.assert_close(A.dnc(x[perm], 3), A.dnc(x, 3))
    assert torch.equal(A.dnc(x, 3, b=5, seed=1), A.dnc(x, 3, b=5, seed=1))
    with pytest.raises(ValueError, match=r"^dnc: b must be an int in \[1, inf\), got 0$"):
        A.check("dnc", 11, 3, b=0)
    with pytest.raises(ValueError, match=r"^dnc needs n - floor\(c f\) >= 1 \(vectors left to "
                                         r"average\), got n=4, f=2, c=2.0$"):
        A.check("dnc", 4, 2, c=2.0)
    rule = A.bind("dnc", 3, b=5)  # a chain: new coordinates each round
    first = rule.select(x).selected
    draws = set()
    for _ in range(6):
        rule.commit(torch.zeros(30))
        draws.add(tuple(rule.select(x).selected.tolist()))
    assert len(draws | {tuple(first.tolist())}) > 1


# --- RFA --------------------------------------------------------------------------------------

def test_rfa_worked_example():
    x = torch.tensor([[0.0], [2.0], [3.0]], dtype=torch.float64)
    # from the mean 5/3: distances 5/3, 1/3, 4/3 -> beta 3/5, 3, 3/4
    # v = (0 * 3/5 + 2 * 3 + 3 * 3/4) / (3/5 + 3 + 3/4)
    expected = (2 * 3 + 3 * 0.75) / (0.6 + 3 + 0.75)
    assert float(A.rfa(x, 1, iters=1, init="mean")) == pytest.approx(expected)
    # smoothing: from the medoid 2 its own distance 0 counts as nu = 0.5
    expected = (0 * 0.5 + 2 * 2 + 3 * 1) / (0.5 + 2 + 1)
    assert float(A.rfa(x, 1, iters=1, nu=0.5)) == pytest.approx(expected)


@pytest.mark.parametrize("init,nu,iters", [("mean", 0.1, 3), ("medoid", 0.1, 3),
                                           ("mean", 1e-6, 20), ("medoid", 2.0, 1)])
def test_rfa_matches_the_loop(init, nu, iters):
    x = torch.randn(10, 25, generator=gen(6), dtype=torch.float64) + 5.0
    if init == "mean":
        start = x.mean(dim=0)
    else:
        dist = torch.cdist(x, x)
        start = x[int(torch.argmin(dist.sum(dim=1)))]
    torch.testing.assert_close(A.rfa(x, 3, nu=nu, iters=iters, init=init),
                               ref_rfa(x, nu, iters, start))


@pytest.mark.parametrize("value", HOSTILE)
def test_rfa_stays_near_the_honest_rows(value):
    n, f = 11, 3
    x = honest_and_hostile(value, n, f)
    got = A.rfa(x, f)
    honest = x[: n - f].double()
    assert torch.isfinite(got).all()
    diameter = float(torch.cdist(honest, honest).max())
    assert float((got.double() - honest.mean(dim=0)).norm()) <= diameter


def test_rfa_parameters_and_permutations():
    x = torch.randn(9, 7, generator=gen(7))
    perm = torch.randperm(9, generator=gen(8))
    torch.testing.assert_close(A.rfa(x[perm], 2), A.rfa(x, 2))
    with pytest.raises(ValueError, match=r"^rfa: nu must be a float in \(0, inf\), got 0$"):
        A.check("rfa", 9, 2, nu=0)
    with pytest.raises(ValueError, match="rfa: init must be one of"):
        A.check("rfa", 9, 2, init="zero")


# --- every new rule and pre-aggregator ----------------------------------------------------------

def test_new_rules_and_pre_aggregators_leave_their_input_alone():
    x = torch.randn(11, 9, generator=gen(9), dtype=torch.float64) * 4
    x[10] = float("nan")
    before = x.clone()
    A.centered_clipping(x, 3, tau=1.0)
    A.dnc(x, 3)
    A.rfa(x, 3)
    nnm(x, 3)
    bucketing(x, 3, s=2)
    clipping(x, c=1.0)
    arc(x, 3)
    assert torch.equal(torch.nan_to_num(x), torch.nan_to_num(before))


def test_registered_with_summaries():
    for name in ("centered-clipping", "dnc", "rfa"):
        assert name in A.names() and A.spec(name).summary
    assert A.pre_aggregators() == ["nnm", "bucketing", "clipping", "arc"]


# --- through the engine -----------------------------------------------------------------------

FAST = dict(dataset="synthetic", model="logreg", workers=11, byzantine=2, rounds=30,
            batch_size=16, lr=0.5, eval_every=10, eval_train_samples=500)


class _Stop(Exception):
    pass


def test_resume_with_centered_clipping_and_bucketing_equals_an_uninterrupted_run(tmp_path):
    config = ExperimentConfig(**{**FAST, "rounds": 30}, aggregator="centered-clipping",
                              aggregator_params={"tau": 0.05}, attack="alie",
                              pre_aggregators=[{"bucketing": {"s": 2}}])
    run(config, tmp_path / "whole")

    def interrupt(done, _):
        if done == 17:
            raise _Stop

    setup = build(config)
    assert isinstance(setup.server.rule, A.Chain) and setup.server.rule.pre  # what attacks see
    sim = Simulation(setup, tmp_path / "cut")
    with pytest.raises(_Stop):
        sim.run(progress=interrupt)
    run(config, tmp_path / "cut", resume=True)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "rounds_per_s"}  # noqa: E731
                         for r in rows]
    whole = read_csv(tmp_path / "whole" / "metrics.csv")
    assert drop(read_csv(tmp_path / "cut" / "metrics.csv")) == drop(whole)
    # the state matters: a run that forgets it (fresh rule at round 10) ends elsewhere
    forgetful = Simulation(build(config), tmp_path / "forget")
    with pytest.raises(_Stop):
        forgetful.run(progress=interrupt)
    import byzsgd.engine.server as server_module
    original = server_module.Server.load_rule_state
    server_module.Server.load_rule_state = lambda self, state: None
    try:
        run(config, tmp_path / "forget", resume=True)
    finally:
        server_module.Server.load_rule_state = original
    assert drop(read_csv(tmp_path / "forget" / "metrics.csv")) != drop(whole)
