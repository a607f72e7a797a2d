"""The distributed runtime: servers and workers as processes on loopback (127.0.0.1).

The end-to-end tests start real processes (``byzsgd run --backend distributed``) and are
bounded twice: by the run's own time limits and by a subprocess timeout.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from byzsgd.config import ExperimentConfig
from byzsgd.distributed import protocol
from byzsgd.distributed.faults import (
    ABSENT,
    MALFORMED,
    NONFINITE,
    OK,
    Fault,
    FaultLog,
    FaultPlan,
    validate,
)
from byzsgd.distributed.launch import torchrun_command
from byzsgd.distributed.node import role
from byzsgd.distributed.protocol import Kind, Message
from byzsgd.experiment import run
from byzsgd.metrics import diagnostics_from_sums, direction_diagnostics, direction_sums
from byzsgd.results import load_checkpoint, read_csv, read_json

FAST = dict(dataset="synthetic", model="logreg", workers=4, byzantine=1, rounds=8,
            batch_size=16, lr=0.5, eval_every=4, eval_train_samples=500)
#: Columns that measure wall-clock time, not the training.
CLOCK = {"rounds_per_s"}


def cfg(**changes) -> ExperimentConfig:
    return ExperimentConfig(**{**FAST, **changes})


def flags(config: ExperimentConfig) -> list[str]:
    """``byzsgd run`` flags that give ``config``."""
    out = []
    for key, value in config.to_dict().items():
        if value is None or value == getattr(ExperimentConfig(), key):
            continue
        if isinstance(value, dict):
            kind = "--aggregator-param" if key == "aggregator_params" else "--attack-param"
            for k, v in value.items():
                out += [kind, f"{k}={v}"]
        else:
            out += ["--" + key.replace("_", "-"), str(value)]
    return out


def distributed(config: ExperimentConfig, out: Path, *extra: str, fault: str = "",
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BYZSGD_FAULT": fault}
    cmd = [sys.executable, "-m", "byzsgd.cli", "run", "--backend", "distributed", "--quiet",
           "--out", str(out), "--deadline", "20", "--connect-timeout", "60",
           "--idle-timeout", "60", *flags(config), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_numbers(a: Path, b: Path, rtol: float = 1e-4) -> None:
    for name in ("metrics.csv", "rounds.csv"):
        rows_a, rows_b = read_csv(a / name), read_csv(b / name)
        assert len(rows_a) == len(rows_b), name
        for ra, rb in zip(rows_a, rows_b, strict=True):
            for key in ra.keys() - CLOCK:
                x, y = float(ra[key]), float(rb[key])
                assert (math.isnan(x) and math.isnan(y)) or math.isclose(
                    x, y, rel_tol=rtol, abs_tol=1e-6), (name, ra["round"], key, x, y)


def faults_of(out: Path) -> dict[tuple[int, int], str]:
    return {(int(r["round"]), int(r["worker"])): r["status"]
            for r in read_csv(out / "faults.csv")}


# -- the pieces, in one process ----------------------------------------------------------------

def test_header_round_trip_and_rejection():
    msg = Message(Kind.VEC, 7, [torch.zeros(5), torch.ones(2, 3, dtype=torch.float64)], aux=3,
                  extra=42)
    header = protocol.decode_header(protocol.encode_header(msg))
    assert (header.kind, header.round, header.aux, header.extra) == (Kind.VEC, 7, 3, 42)
    assert [header.shape(i) for i in range(2)] == [(1, 5), (2, 3)]
    assert header.dtype(1) == torch.float64 and header.nbytes(1) == 48
    bad = protocol.encode_header(msg)
    bad[0] = 1
    with pytest.raises(protocol.ProtocolError, match="magic"):
        protocol.decode_header(bad)
    bad = protocol.encode_header(msg)
    bad[6] = 99
    with pytest.raises(protocol.ProtocolError, match="dtype"):
        protocol.decode_header(bad)
    assert role(0, 2, 4) == ("server", 0)
    assert role(2, 2, 4) == ("worker", 0)
    with pytest.raises(ValueError, match="outside"):
        role(6, 2, 4)


def test_received_vectors_are_classified():
    row = torch.randn(1, 6)
    assert validate([row], 6)[0] == OK
    assert validate(None, 6)[0] == ABSENT
    assert validate([row.double()], 6)[0] == MALFORMED
    assert validate([torch.randn(1, 7)], 6)[0] == MALFORMED
    assert validate([row, row], 6)[0] == MALFORMED
    nan = row.clone()
    nan[0, 2] = float("nan")
    code, got, _ = validate([nan], 6)
    assert code == NONFINITE and got is not None  # passed on to the rule, counted


def test_fault_injection_spec():
    f = Fault.parse("garbage:worker=3:round=2-4:what=dtype")
    assert (f.action, f.role, f.index, f.first, f.last) == ("garbage", "worker", 3, 2, 4)
    assert f.applies("worker", 3, 4) and not f.applies("worker", 3, 5)
    plan = FaultPlan("worker", 1, "kill:worker=2:round=3;hang:worker=1:round=5:seconds=0")
    assert plan.at(3) is None and plan.at(5).action == "hang"
    for spec in ("explode:worker=1:round=1", "kill:round=1", "garbage:worker=1:round=1:what=x"):
        with pytest.raises(ValueError, match="BYZSGD_FAULT"):
            Fault.parse(spec)


def test_fault_log_counts_and_flags_rounds_beyond_f(tmp_path):
    log = FaultLog(tmp_path / "faults.csv", rule_f=1)
    log.reset(fresh=True, below=0)
    status = torch.tensor([OK, ABSENT, NONFINITE, OK])
    counts = log.record(3, status, {1: (0, "dead")}, torch.tensor([3]))
    assert counts == {"nonfinite": 1, "absent": 1, "malformed": 0, "faults": 2}
    assert log.totals["rounds_beyond_f"] == 1  # worker 1 absent + worker 3 Byzantine > f = 1
    log.record(4, torch.tensor([OK, ABSENT, OK, OK]), {}, torch.tensor([1]))
    assert log.totals["rounds_beyond_f"] == 1  # the absent worker is the Byzantine one
    assert [r["status"] for r in read_csv(tmp_path / "faults.csv")] == ["absent", "nonfinite",
                                                                        "absent"]


def test_sharded_diagnostics_equal_the_full_ones():
    g, a = torch.randn(10), torch.randn(10)
    sums = direction_sums(g[:4], a[:4]) + direction_sums(g[4:], a[4:])
    full = direction_diagnostics(g, a)
    assert math.isclose(full["distance"], float((a.double() - g.double()).norm()),
                        rel_tol=1e-12)
    assert math.isclose(full["aggregate_norm"], float(a.double().norm()), rel_tol=1e-12)
    for key, value in diagnostics_from_sums(sums).items():
        assert math.isclose(value, full[key], rel_tol=1e-9)


def test_torchrun_command_for_one_and_several_machines():
    config = cfg(servers=2)
    one = torchrun_command(config, "runs/x", ["--quiet"])
    assert "--standalone" in one and "--nproc-per-node=6" in one
    assert one[one.index("-m", 3) + 1] == "byzsgd.distributed.node"
    two = torchrun_command(config, "runs/x", [], nnodes=2, node_rank=1, nproc_per_node=3,
                           master_addr="10.0.0.1", master_port=29400)
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1",
            "--master-port=29400"} <= set(two)
    rdzv = torchrun_command(config, "runs/x", [], nnodes=2, nproc_per_node=3,
                            rdzv_endpoint="host:29400")
    assert "--rdzv-endpoint=host:29400" in rdzv and "--rdzv-backend=c10d" in rdzv


# -- real processes on loopback ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(150)
def test_one_server_four_workers_equal_the_simulator_under_attack(tmp_path):
    """A Byzantine worker process runs IPM (omniscient: the server forwards it the honest
    vectors) and the run gives the simulator's numbers."""
    config = cfg(aggregator="median", attack="ipm", attack_params={"epsilon": 0.5},
                 momentum=0.5)
    run(config, tmp_path / "sim")
    result = distributed(config, tmp_path / "dist")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_numbers(tmp_path / "sim", tmp_path / "dist")
    summary = read_json(tmp_path / "dist" / "summary.json")
    assert summary["status"] == "complete" and summary["backend"] == "distributed"
    assert summary["faults"]["absent"] == summary["faults"]["malformed"] == 0
    assert [int(r["attacked"]) for r in read_csv(tmp_path / "dist" / "rounds.csv")] == [1] * 8
    # the same checkpoint format: theta and the momentum buffer, full
    sim, dist = (load_checkpoint(tmp_path / x / "checkpoint.pt") for x in ("sim", "dist"))
    assert torch.allclose(sim["theta"], dist["theta"], atol=1e-5)
    assert torch.allclose(sim["server"]["buffer"], dist["server"]["buffer"], atol=1e-5)
    assert len(read_csv(tmp_path / "dist" / "timings.csv")) == 8


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_servers_with_a_coordinatewise_rule_equal_the_simulator(tmp_path):
    """Two servers each aggregate their shard; ALIE (own knowledge) runs in the Byzantine
    worker, which joins the shards the servers forward."""
    config = cfg(servers=2, workers=3, aggregator="trimmed-mean", attack="alie", rounds=6,
                 eval_every=3)
    run(config, tmp_path / "sim")
    result = distributed(config, tmp_path / "dist")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_numbers(tmp_path / "sim", tmp_path / "dist")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_killed_hung_and_garbage_workers_do_not_stop_the_run(tmp_path):
    """Worker 2 dies in round 2; worker 1 sends a wrong shape, a wrong dtype, NaN, and
    later a message of the wrong kind; worker 3 hangs past the deadline in round 6 and comes
    back; worker 4 is Byzantine (ALIE) throughout. Every round completes and every fault is
    counted; with at most 3 hostile rows of 5, the median stays finite."""
    config = cfg(workers=5, selection="fixed", aggregator="median", attack="alie", rounds=10,
                 eval_every=5)
    fault = ("kill:worker=2:round=2;garbage:worker=1:round=3:what=shape;"
             "garbage:worker=1:round=4:what=dtype;garbage:worker=1:round=5:what=nan;"
             "hang:worker=3:round=6:seconds=3;garbage:worker=1:round=8:what=header")
    out = tmp_path / "dist"
    result = distributed(config, out, "--deadline", "2", fault=fault)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worker 2 (rank 3) exited" in result.stderr
    faults = faults_of(out)
    assert all(faults[(t, 2)] == "absent" for t in range(2, 10))
    assert faults[(3, 1)] == faults[(4, 1)] == "malformed"
    assert faults[(5, 1)] == "nonfinite" and faults[(8, 1)] == "malformed"
    assert faults[(6, 3)] == "absent" and (9, 3) not in faults  # hung, then back
    assert (0, 2) not in faults and (1, 1) not in faults and (9, 4) not in faults
    rounds = read_csv(out / "rounds.csv")
    assert len(rounds) == 10
    assert [int(r["faults"]) for r in rounds][:6] == [0, 0, 1, 2, 2, 2]
    summary = read_json(out / "summary.json")
    assert summary["status"] == "complete"
    assert summary["faults"]["absent"] >= 9 and summary["faults"]["malformed"] == 3
    assert math.isfinite(float(read_csv(out / "metrics.csv")[-1]["test_loss"]))
    assert all(float(r["cosine"]) > 0 for r in rounds)  # the median still descends


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_killed_server_resumes_from_its_checkpoint(tmp_path):
    config = cfg(workers=2, aggregator="mean", byzantine=0, momentum=0.9, rounds=9,
                 eval_every=3)
    run(config, tmp_path / "sim")
    out = tmp_path / "dist"
    first = distributed(config, out, fault="kill:server=0:round=5")
    assert first.returncode != 0 and "server 0 exited" in first.stderr
    assert read_json(out / "summary.json")["status"] == "running"
    assert len(read_csv(out / "rounds.csv")) == 5
    second = distributed(config, out, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same_numbers(tmp_path / "sim", out)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_under_torchrun_a_dead_worker_does_not_tear_the_run_down(tmp_path):
    """torchrun stops every process when one fails: a supervisor keeps a worker's death from
    counting as a failure."""
    config = cfg(workers=2, byzantine=0, aggregator="median", rounds=6, eval_every=3)
    out = tmp_path / "dist"
    result = distributed(config, out, "--launcher", "torchrun",
                         fault="kill:worker=1:round=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(out / "summary.json")["status"] == "complete"
    assert all(faults_of(out)[(t, 1)] == "absent" for t in range(2, 6))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_batchnorm_model_runs_distributed_with_the_simulators_numbers(tmp_path):
    """ResNet-20 (BatchNorm): each worker process normalizes with its own batch, the lead
    server recomputes the running statistics from theta, as the simulator does."""
    config = cfg(model="resnet20", workers=3, byzantine=1, aggregator="median",
                 attack="sign-flip", rounds=2, eval_every=2, batch_size=4, lr=0.05,
                 eval_train_samples=64)
    run(config, tmp_path / "sim")
    result = distributed(config, tmp_path / "dist", timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_numbers(tmp_path / "sim", tmp_path / "dist")
