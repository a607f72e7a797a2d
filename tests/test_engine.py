"""The training engine: files written, determinism, resume, learning, attacks' effects."""

from __future__ import annotations

import math

import pytest
import tomllib
import torch

from byzsgd import aggregators
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.engine.round import Step, Workspace, round_
from byzsgd.engine.sampler import WorkerSampler
from byzsgd.engine.server import Server, learning_rate
from byzsgd.engine.simulator import Simulation, build
from byzsgd.experiment import run
from byzsgd.results import read_csv, read_json

FAST = dict(dataset="synthetic", model="logreg", workers=11, byzantine=2, rounds=30,
            batch_size=16, lr=0.5, eval_every=10, eval_train_samples=500)


def cfg(**changes):
    return ExperimentConfig(**{**FAST, **changes})


def test_run_writes_its_files(tmp_path):
    summary = run(cfg(aggregator="krum", attack="alie"), tmp_path)
    metrics = read_csv(tmp_path / "metrics.csv")
    assert [int(r["round"]) for r in metrics] == [0, 10, 20, 30]
    assert len(read_csv(tmp_path / "rounds.csv")) == 30
    written = tomllib.loads((tmp_path / "config.toml").read_text())
    assert written["aggregator"] == "krum" and written["workers"] == 11
    assert ExperimentConfig.from_toml(tmp_path / "config.toml") == cfg(aggregator="krum",
                                                                        attack="alie")
    on_disk = read_json(tmp_path / "summary.json")
    assert on_disk["status"] == "complete"
    assert on_disk["final_test_accuracy"] == summary["final_test_accuracy"]
    assert 0 <= summary["best_test_accuracy"] <= 1
    # Krum under ALIE: the rule reports how many Byzantine rows it selected.
    assert all(0 <= float(r["byzantine_selected"]) <= 1 for r in metrics[1:])


def test_same_seed_same_numbers_and_other_seed_differs(tmp_path):
    run(cfg(aggregator="median", attack="ipm"), tmp_path / "a")
    run(cfg(aggregator="median", attack="ipm"), tmp_path / "b")
    run(cfg(aggregator="median", attack="ipm", seed=1), tmp_path / "c")
    a, b, c = ((tmp_path / x / "metrics.csv").read_text() for x in "abc")
    strip = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731
    assert strip(a) == strip(b)  # everything but the wall-clock rounds/s
    assert strip(a) != strip(c)


class _Stop(Exception):
    pass


def test_resume_ends_with_the_numbers_of_an_uninterrupted_run(tmp_path):
    config = cfg(aggregator="bulyan", attack="alie", momentum=0.9, rounds=40)
    run(config, tmp_path / "whole")

    def interrupt(done, _):
        if done == 27:
            raise _Stop

    sim = Simulation(build(config), tmp_path / "cut")
    with pytest.raises(_Stop):
        sim.run(progress=interrupt)
    assert read_json(tmp_path / "cut" / "summary.json")["status"] == "running"
    run(config, tmp_path / "cut", resume=True)
    whole = read_csv(tmp_path / "whole" / "metrics.csv")
    cut = read_csv(tmp_path / "cut" / "metrics.csv")
    drop = lambda rows: [{k: v for k, v in r.items() if k != "rounds_per_s"} for r in rows]  # noqa: E731
    assert drop(cut) == drop(whole)
    assert len(read_csv(tmp_path / "cut" / "rounds.csv")) == 40


def test_resume_refuses_a_different_config(tmp_path):
    run(cfg(rounds=10), tmp_path)
    with pytest.raises(ConfigError, match="different config"):
        run(cfg(rounds=10, lr=0.3), tmp_path, resume=True)


def test_training_learns_without_attack(tmp_path):
    summary = run(cfg(aggregator="mean", rounds=60, byzantine=0), tmp_path)
    assert summary["final_test_accuracy"] > 0.8


def test_omniscient_attack_breaks_mean_but_not_median(tmp_path):
    broken = run(cfg(aggregator="mean", attack="omniscient", rounds=60), tmp_path / "mean")
    held = run(cfg(aggregator="median", attack="omniscient", rounds=60), tmp_path / "median")
    assert held["final_test_accuracy"] > 0.6
    assert not broken["final_test_accuracy"] > 0.3


def test_ipm_breaks_median_for_positive_epsilon_only(tmp_path):
    """Fall of Empires 6.2: median with q = 12 of 25 Byzantine fails under epsilon > 0 (the
    inner product with the true gradient turns negative) and holds at epsilon = -10."""
    results = {}
    for eps in (10.0, -10.0):
        out = tmp_path / str(eps)
        results[eps] = run(cfg(workers=25, byzantine=12, aggregator="median", attack="ipm",
                               attack_params={"epsilon": eps}, rounds=80), out)
        results[eps]["negative"] = sum(float(r["inner_product"]) < 0
                                       for r in read_csv(out / "rounds.csv"))
    assert results[10.0]["final_test_accuracy"] < 0.3 < 0.6 < results[-10.0]["final_test_accuracy"]
    assert results[10.0]["negative"] >= 5 and results[-10.0]["negative"] == 0


@pytest.mark.slow
def test_alie_pattern_backdoor_is_planted_by_the_literal_algorithm4(tmp_path):
    """A Little Is Enough, Table 3 in small (mnist-5k, n = 11, m = 3, Krum, standardized
    inputs, alpha = z = 0.2): Algorithm 4 read literally (method "sgd", the edge push) plants
    the pattern; descending to the minimizer of Eq. 3 ("minimize") leaves mu and plants
    nothing (REPRODUCTION.md, Engine findings)."""
    success = {}
    for method in ("sgd", "minimize"):
        out = tmp_path / method
        run(cfg(dataset="mnist-5k", model="mlp", lr=0.1, momentum=0.9, workers=11,
                byzantine=3, selection="fixed", knowledge="own", aggregator="krum",
                attack="alie-backdoor", attack_params={"method": method}, backdoor="pattern",
                inputs="standardized", batch_size=32, rounds=80, eval_every=40), out)
        success[method] = float(read_csv(out / "metrics.csv")[-1]["backdoor_success"])
    assert success["sgd"] > 0.5 > 0.2 > success["minimize"], success


@pytest.mark.parametrize("changes", [
    dict(mode="model-averaging", local_steps=2, aggregator="trimmed-mean", attack="alie"),
    dict(servers=4, aggregator="meamed", attack="gambler", byzantine=2),
    dict(servers=3, aggregator="krum", attack="bit-flip"),
    dict(attack="label-flip", aggregator="multi-krum"),
    dict(attack="alie-backdoor", backdoor="sample", aggregator="trimmed-mean"),
    dict(attack="alie-backdoor", backdoor="pattern", aggregator="krum",
         mode="model-averaging"),
    dict(partition="dirichlet", partition_alpha=0.5, aggregator="geomed", attack="gaussian"),
    dict(lr_schedule="fading", lr_fading=10.0, aggregator="medoid", attack="linf"),
    dict(selection="fixed", knowledge="omniscient", aggregator="bulyan", attack="alie",
         attack_start=10, attack_stop=20),
])
def test_every_mode_runs_and_stays_finite(tmp_path, changes):
    summary = run(cfg(rounds=12, eval_every=6, **changes), tmp_path)
    assert summary["status"] == "complete"
    rows = read_csv(tmp_path / "metrics.csv")
    assert len(rows) == 3
    if changes.get("backdoor", "none") != "none":
        assert 0 <= float(rows[-1]["backdoor_success"]) <= 1
    if "attack_start" in changes:
        attacked = [int(r["attacked"]) for r in read_csv(tmp_path / "rounds.csv")]
        assert attacked == [0] * 10 + [1] * 2


@pytest.mark.parametrize(("changes", "message"), [
    (dict(aggregator="krum", byzantine=5), r"krum needs n >= 2f \+ 3, got n=11, f=5"),
    (dict(aggregator="krumm"), "unknown aggregation rule 'krumm'"),
    (dict(attack="nope"), "unknown attack 'nope'"),
    (dict(batch_size=5000), "batch_size"),
    (dict(byzantine=12), "byzantine must satisfy 0 <= f <= n"),
    (dict(lr=0.0), r"lr must be a float in \(0, inf\)"),
    (dict(dataset="imagenet"), "unknown dataset 'imagenet'"),
    (dict(mode="async"), "mode must be one of"),
    (dict(aggregator="multi-krum", aggregator_params={"q": 1}), "unknown parameter"),
    (dict(attack="alie-backdoor"), "needs a backdoor task"),
    (dict(attack_start=5, attack_stop=2), "attack window"),
])
def test_invalid_configs_fail_before_training(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        run(cfg(**changes), tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def test_sampler_walks_each_shard_once_per_epoch():
    shards = [torch.arange(i * 20, (i + 1) * 20) for i in range(3)]
    sampler = WorkerSampler(shards, batch_size=5, seed=0)
    assert sampler.rounds_per_epoch == 4
    seen = torch.cat([sampler.indices(t) for t in range(4)], dim=1)
    for i in range(3):
        assert sorted(seen[i].tolist()) == list(range(i * 20, (i + 1) * 20))
    assert not torch.equal(sampler.indices(4), sampler.indices(0))
    assert torch.equal(WorkerSampler(shards, 5, 0).indices(6), sampler.indices(6))


def test_server_momentum_and_weight_decay_match_torch_sgd():
    rule = aggregators.bind("mean", 0)
    theta = torch.randn(7)
    server = Server(rule, 7, momentum=0.9, weight_decay=0.01)
    param = torch.nn.Parameter(theta.clone())
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9, weight_decay=0.01)
    for step in range(5):
        g = torch.randn(7, generator=torch.Generator().manual_seed(step))
        theta = server.step(theta, g, 0.1)
        param.grad = g.clone()
        opt.step()
    assert torch.allclose(theta, param.detach(), atol=1e-6)


def test_the_rounds_step_is_the_servers_step():
    """round_'s Step (theta and momentum buffer in, out) equals Server.step (its own buffer),
    and in model-averaging mode the aggregate becomes theta."""
    server = Server(aggregators.bind("mean", 0), 7, momentum=0.9, weight_decay=0.01)
    step = Step(mode="gradient", lr=0.1, momentum=0.9, weight_decay=0.01)
    theta = a = torch.randn(7)
    buffer = None
    for t in range(5):
        g = torch.randn(7, generator=torch.Generator().manual_seed(t))
        theta = server.step(theta, g, 0.1)
        a, buffer = step(a, g, step.lr_at(t), buffer)
        assert torch.equal(theta, a) and torch.equal(server.buffer, buffer)
    averaged, kept = Step(mode="model-averaging", lr=0.1)(theta, a + 1, 0.1, None)
    assert torch.equal(averaged, a + 1) and kept is None


def test_sharded_servers_aggregate_each_shard_with_the_rule():
    x = torch.randn(9, 10)
    server = Server(aggregators.bind("krum", 2), 10, servers=2)
    result = server.aggregate(x)
    assert len(result.selected) == 2
    assert torch.equal(result.value[:5], aggregators.krum(x[:, :5], 2))
    assert torch.equal(result.value[5:], aggregators.krum(x[:, 5:], 2))


def test_fading_learning_rate():
    assert learning_rate(1.0, "fading", 0, 10.0) == 1.0
    assert math.isclose(learning_rate(1.0, "fading", 10, 10.0), 0.5)


@pytest.mark.parametrize("knowledge, computed", [("omniscient", 9), ("own", 11)])
def test_byzantine_vectors_are_computed_only_when_the_attack_reads_them(
        tmp_path, monkeypatch, knowledge, computed):
    sim = Simulation(build(cfg(attack="alie", attack_params={"knowledge": knowledge})),
                     tmp_path)
    rows_seen = []
    original = sim.workers.vectors

    def spy(*args, **kwargs):
        vectors = original(*args, **kwargs)
        rows_seen.append(vectors.shape[0])
        return vectors

    monkeypatch.setattr(sim.workers, "vectors", spy)
    for t in range(5):
        sim.round(t)
    assert rows_seen == [computed] * 5


def test_skipping_the_byzantine_vectors_changes_no_number(tmp_path, monkeypatch):
    config = cfg(aggregator="krum", attack="alie", attack_params={"knowledge": "omniscient"},
                 rounds=10)
    lean = Simulation(build(config), tmp_path / "a")
    full = Simulation(build(config), tmp_path / "b")
    rows_lean = [lean.round(t) for t in range(10)]
    monkeypatch.setattr(full.adversary, "reads_byzantine_vectors", lambda: True)
    rows_full = [full.round(t) for t in range(10)]
    torch.testing.assert_close(lean.theta, full.theta)
    for a, b in zip(rows_lean, rows_full, strict=True):
        assert a["byzantine_selected"] == b["byzantine_selected"]
        assert math.isclose(a["inner_product"], b["inner_product"], rel_tol=1e-4)


def test_standardized_inputs_run_and_differ_from_raw(tmp_path):
    raw = run(cfg(rounds=10), tmp_path / "raw")
    st = run(cfg(rounds=10, inputs="standardized"), tmp_path / "st")
    assert math.isfinite(st["final_test_accuracy"])
    assert st["final_test_accuracy"] != raw["final_test_accuracy"] or \
        read_csv(tmp_path / "st" / "metrics.csv") != read_csv(tmp_path / "raw" / "metrics.csv")
    with pytest.raises(ConfigError, match="inputs"):
        cfg(inputs="whitened").validate()



def test_mnist_first_layer_runs_on_the_non_zero_pixels(tmp_path):
    """Raw MNIST (19% of the pixels lit) takes the sparse first layer; standardized inputs
    (no zeros) and convolutional models do not; both paths train alike."""
    mnist = dict(dataset="mnist-5k", model="mlp", workers=11, byzantine=2, batch_size=16)
    setup = build(cfg(**mnist))
    assert setup.flat.sparse_inputs is not None and setup.flat.sparse_inputs.density < 0.3
    assert build(cfg(**mnist, inputs="standardized")).flat.sparse_inputs is None
    assert build(cfg(**{**mnist, "model": "cnn-fall"})).flat.sparse_inputs is None
    sparse = Simulation(setup, tmp_path / "a")
    dense_setup = build(cfg(**mnist))
    dense_setup.flat.use_training_inputs(dense_setup.dataset.x_train, sparse=False)
    assert dense_setup.flat.sparse_inputs is None
    dense = Simulation(dense_setup, tmp_path / "b")
    for t in range(5):
        sparse.round(t)
        dense.round(t)
    torch.testing.assert_close(sparse.theta, dense.theta, rtol=1e-4, atol=1e-6)


def test_a_round_depends_only_on_its_inputs():
    """round_ from the same (t, theta, buffer) gives the same theta, buffer and record, in
    any order of rounds (no hidden state), and leaves its inputs as they were."""
    setup = build(cfg(aggregator="krum", attack="alie", momentum=0.9))
    parts = dict(workers=setup.workers(), adversary=setup.adversary(), server=setup.server,
                 step=setup.step(), workspace=Workspace(11, setup.flat.d))
    theta0 = setup.flat.initial()
    theta1, buffer1, _ = round_(0, theta0.clone(), None, **parts)
    results = []
    for _ in range(2):
        theta, buffer = theta1.clone(), buffer1.clone()
        results.append(round_(5, theta, buffer, **parts))
        assert torch.equal(theta, theta1)  # theta_t is not changed in place
        round_(9, theta1.clone(), buffer1.clone(), **parts)  # another round between
    (ta, ba, ra), (tb, bb, rb) = results
    assert torch.equal(ta, tb) and torch.equal(ba, bb) and ra == rb
    assert not torch.equal(ta, theta1) and ra["round"] == 5 and ra["attacked"] == 1
