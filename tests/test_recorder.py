"""A run's files (engine/recorder.py): nothing finished or running is lost, damaged files are
reported clearly, a diverged run says so; the same rules on both backends."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from byzsgd.cli import main
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.engine.recorder import RunLocked, lock
from byzsgd.engine.setup import build
from byzsgd.engine.simulator import Simulation
from byzsgd.experiment import run
from byzsgd.results import CheckpointError, load_checkpoint, read_csv, read_json

FAST = dict(dataset="synthetic", model="logreg", workers=5, byzantine=1, rounds=30,
            batch_size=16, lr=0.5, eval_every=10, eval_train_samples=200, aggregator="median",
            attack="alie", momentum=0.9)
FLAGS = ["--dataset", "synthetic", "--model", "logreg", "--workers", "5", "--byzantine", "1",
         "--rounds", "30", "--batch-size", "16", "--lr", "0.5", "--eval-every", "10",
         "--eval-train-samples", "200", "--aggregator", "median", "--attack", "alie",
         "--momentum", "0.9", "--quiet"]
FILES = ("metrics.csv", "rounds.csv", "config.toml", "summary.json", "checkpoint.pt")


def cfg(**changes) -> ExperimentConfig:
    return ExperimentConfig(**{**FAST, **changes})


def snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in FILES}


def without_clock(rows):
    return [{k: v for k, v in r.items() if k != "rounds_per_s"} for r in rows]


class _Stop(Exception):
    pass


def interrupted(config: ExperimentConfig, out: Path, after: int) -> None:
    """A run killed after ``after`` rounds (its files as the kill leaves them)."""
    def stop(done, _):
        if done == after:
            raise _Stop

    with pytest.raises(_Stop):
        Simulation(build(config), out).run(progress=stop)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    run(cfg(), out)
    return out


def assert_same_as(whole: Path, out: Path) -> None:
    for name in ("metrics.csv", "rounds.csv"):
        assert without_clock(read_csv(out / name)) == without_clock(read_csv(whole / name)), name


# -- resume --------------------------------------------------------------------------------------

def test_resume_on_a_finished_run_changes_nothing(whole, tmp_path, capsys):
    out = tmp_path / "r"
    summary = run(cfg(), out)
    before = snapshot(out)
    again = run(cfg(), out, resume=True)
    assert snapshot(out) == before
    assert again["status"] == "complete"
    assert again["final_test_accuracy"] == summary["final_test_accuracy"]
    capsys.readouterr()
    assert main(["run", *FLAGS, "--out", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "finished run" in captured.err and "final test accuracy" not in captured.err
    assert snapshot(out) == before


def test_resume_from_the_round_0_checkpoint_writes_round_0_once(whole, tmp_path):
    out = tmp_path / "r"
    interrupted(cfg(), out, after=1)
    assert load_checkpoint(out / "checkpoint.pt")["round"] == 0
    run(cfg(), out, resume=True)
    assert [int(r["round"]) for r in read_csv(out / "metrics.csv")] == [0, 10, 20, 30]
    assert_same_as(whole, out)


def test_rows_cut_by_a_kill_are_dropped_on_resume(whole, tmp_path):
    out = tmp_path / "r"
    interrupted(cfg(), out, after=14)
    for name, cut in (("metrics.csv", "20,1,0.5,0.4"), ("rounds.csv", "14,0.5,1,0.12")):
        with open(out / name, "a") as fh:
            fh.write(cut)  # a row cut mid-way: no line end, fields missing
    run(cfg(), out, resume=True)
    assert_same_as(whole, out)


def test_a_row_cut_inside_its_last_field_is_dropped(whole, tmp_path):
    """Same number of fields, but no line end: the last value may be cut short."""
    out = tmp_path / "r"
    interrupted(cfg(), out, after=14)
    full_row = (whole / "rounds.csv").read_text().splitlines()[15]  # round 14
    with open(out / "rounds.csv", "a") as fh:
        fh.write(full_row[:-1])
    run(cfg(), out, resume=True)
    assert_same_as(whole, out)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_a_damaged_checkpoint_is_reported_by_name(tmp_path, capsys, content):
    out = tmp_path / "r"
    interrupted(cfg(), out, after=14)
    before = (out / "metrics.csv").read_bytes()
    (out / "checkpoint.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is damaged"):
        run(cfg(), out, resume=True)
    assert main(["run", *FLAGS, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(out / "checkpoint.pt") in err and "Traceback" not in err
    assert (out / "metrics.csv").read_bytes() == before


def test_resume_without_its_checkpoint_refuses_to_start_over(tmp_path):
    out = tmp_path / "r"
    interrupted(cfg(), out, after=14)
    before = {name: (out / name).read_bytes() for name in ("metrics.csv", "rounds.csv")}
    (out / "checkpoint.pt").unlink()
    with pytest.raises(ConfigError, match=r"no checkpoint\.pt"):
        run(cfg(), out, resume=True)
    assert {name: (out / name).read_bytes() for name in before} == before


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoints_load_weights_only_and_refuse_code(whole, tmp_path):
    state = torch.load(whole / "checkpoint.pt", weights_only=True)  # tensors and plain values
    assert state["round"] == 30 and state["theta"].dtype == torch.float32
    assert state["summary"]["status"] == "running"  # as of the last evaluation
    crafted = tmp_path / "checkpoint.pt"
    with open(crafted, "wb") as fh:
        pickle.dump({**state, "evil": _Payload()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="damaged or not a byzsgd checkpoint"):
        load_checkpoint(crafted)
    torch.save({"round": 3}, crafted)
    with pytest.raises(CheckpointError, match="lacks config, theta"):
        load_checkpoint(crafted)


def test_a_checkpoint_without_the_summary_still_resumes(whole, tmp_path):
    """Checkpoints written before the summary was kept in them resume as before."""
    out = tmp_path / "r"
    interrupted(cfg(), out, after=14)
    state = load_checkpoint(out / "checkpoint.pt")
    del state["summary"]
    torch.save(state, out / "checkpoint.pt")
    summary = run(cfg(), out, resume=True)
    assert_same_as(whole, out)
    assert summary["final_test_accuracy"] == read_json(whole / "summary.json")[
        "final_test_accuracy"]


# -- one run per --out ---------------------------------------------------------------------------

def test_a_second_run_on_the_same_out_fails_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "r"
    held = lock(out)
    try:
        tic = time.monotonic()
        with pytest.raises(RunLocked, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            run(cfg(), out)
        assert time.monotonic() - tic < 5
        assert main(["run", *FLAGS, "--out", str(out)]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert not (out / "metrics.csv").exists()
    finally:
        held.close()
    assert run(cfg(rounds=10), out)["status"] == "complete"


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "r"
    code = ("import sys, time; from pathlib import Path; from byzsgd.engine.recorder import lock;"
            "held = lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            run(cfg(rounds=10), out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # stale, but not held
    assert run(cfg(rounds=10), out)["status"] == "complete"


def _distributed(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "byzsgd.cli", "run", "--backend", "distributed", *FLAGS,
           "--out", str(out), "--connect-timeout", "30", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _lead_node(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The lead server's process alone (rank 0): it checks ``out`` before joining."""
    config = json.dumps(cfg().to_dict())
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "6", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "1"}
    cmd = [sys.executable, "-m", "byzsgd.distributed.node", "--config-json", config, "--out",
           str(out), "--quiet", "--connect-timeout", "5", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_distributed_backend_refuses_to_replace_a_finished_run(tmp_path):
    out = tmp_path / "r"
    run(cfg(), out)
    before = snapshot(out)
    result = _distributed(out)
    assert result.returncode == 2 and "already holds a run" in result.stderr, result.stderr
    lead = _lead_node(out)
    assert lead.returncode == 2 and "already holds a run" in lead.stderr, lead.stderr
    assert snapshot(out) == before


def test_distributed_backend_takes_the_same_lock(tmp_path):
    out = tmp_path / "r"
    held = lock(out)
    try:
        result = _distributed(out)
        assert result.returncode == 2 and f"pid {os.getpid()}" in result.stderr, result.stderr
        lead = _lead_node(out)
        assert lead.returncode == 2 and f"pid {os.getpid()}" in lead.stderr, lead.stderr
    finally:
        held.close()
    assert not (out / "metrics.csv").exists()


# -- divergence ----------------------------------------------------------------------------------

def test_a_diverging_run_stops_with_status_diverged(tmp_path, capsys):
    out = tmp_path / "r"
    summary = run(cfg(aggregator="mean", attack="none", byzantine=0, lr=1e38), out)
    assert summary["status"] == "diverged"
    assert summary["diverged_round"] == summary["rounds_done"] < 30
    assert read_json(out / "summary.json")["status"] == "diverged"
    assert len(read_csv(out / "rounds.csv")) == summary["rounds_done"]
    assert "training diverged" not in capsys.readouterr().err  # a library call: the summary
    before = snapshot(out)
    assert run(cfg(aggregator="mean", attack="none", byzantine=0, lr=1e38), out,
               resume=True)["status"] == "diverged"
    assert snapshot(out) == before
    code = main(["run", *FLAGS, "--aggregator", "mean", "--attack", "none", "--byzantine", "0",
                 "--lr", "1e38", "--out", str(tmp_path / "cli")])
    assert code == 3
    assert "training diverged" in capsys.readouterr().err
