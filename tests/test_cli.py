"""The ``byzsgd`` command as a user types it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from byzsgd.cli import main
from byzsgd.results import read_csv, read_json

FAST = ["--dataset", "synthetic", "--model", "logreg", "--workers", "11", "--byzantine", "2",
        "--rounds", "12", "--eval-every", "6", "--batch-size", "16", "--lr", "0.5", "--quiet"]


def test_run_with_flags_and_params(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["run", *FAST, "--aggregator", "multi-krum", "--aggregator-param", "m=4",
                 "--attack", "ipm", "--attack-param", "epsilon=0.1", "--out", str(out)]) == 0
    summary = read_json(out / "summary.json")
    assert summary["config"]["aggregator_params"] == {"m": 4}
    assert summary["config"]["attack_params"] == {"epsilon": 0.1}
    assert {"final_test_accuracy", "best_test_accuracy"} <= set(summary)


def test_run_from_a_config_file_with_flag_override(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('dataset = "synthetic"\nmodel = "logreg"\nworkers = 7\nbyzantine = 1\n'
                      'rounds = 6\neval_every = 3\naggregator = "median"\n'
                      '[attack_params]\nepsilon = 0.5\n')
    out = tmp_path / "o"
    assert main(["run", "--config", str(config), "--attack", "ipm", "--rounds", "9",
                 "--quiet", "--out", str(out)]) == 0
    cfg = read_json(out / "summary.json")["config"]
    assert (cfg["rounds"], cfg["aggregator"], cfg["attack"]) == (9, "median", "ipm")
    assert cfg["attack_params"] == {"epsilon": 0.5}


def test_invalid_config_is_reported_with_exit_code_2(tmp_path, capsys):
    assert main(["run", *FAST, "--aggregator", "krum", "--byzantine", "5",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "krum needs n >= 2f + 3, got n=11, f=5" in err


def test_resume_flag(tmp_path):
    out = str(tmp_path / "r")
    assert main(["run", *FAST, "--out", out]) == 0
    assert main(["run", *FAST, "--out", out, "--resume"]) == 0
    assert len(read_csv(Path(out) / "rounds.csv")) == 12


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("krum", "bulyan", "meamed", "alie", "ipm", "bit-flip", "mnist-5k", "cifar10",
                 "mlp", "cnn-cifar"):
        assert name in out


def test_sweep_skips_finished_runs_and_plots(tmp_path, capsys):
    config = tmp_path / "s.toml"
    config.write_text('[experiment]\ndataset = "synthetic"\nmodel = "logreg"\nworkers = 11\n'
                      'byzantine = 2\nrounds = 8\neval_every = 4\nbatch_size = 16\n'
                      '[sweep]\naggregator = ["mean", "median"]\nattack = ["none", "ipm"]\n'
                      'seeds = [0, 1]\n[sweep.params.ipm]\nepsilon = 0.5\n')
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(config), "--out", str(out), "--jobs", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "8 to run" in first
    table = read_csv(out / "sweep.csv")
    assert len(table) == 4 and all(r["seeds"] == "2" for r in table)
    assert (out / "curves.png").stat().st_size > 0 and (out / "heatmap.png").exists()
    ipm = next(p for p in out.iterdir() if "attack=ipm" in p.name)
    assert read_json(ipm / "summary.json")["config"]["attack_params"] == {"epsilon": 0.5}
    assert main(args) == 0
    assert "8 already complete, 0 to run" in capsys.readouterr().out
    assert main(["plot", str(out), "--format", "pdf"]) == 0
    assert (out / "curves.pdf").exists() and (out / "heatmap.pdf").exists()


def test_sweep_over_an_attack_parameter(tmp_path, capsys):
    """A [sweep] axis can be a parameter of the attack (or rule): it overrides the same key
    given for that attack under [sweep.params.NAME] and in [experiment]."""
    config = tmp_path / "s.toml"
    config.write_text('[experiment]\ndataset = "synthetic"\nmodel = "logreg"\nworkers = 11\n'
                      'byzantine = 2\nrounds = 4\neval_every = 4\nbatch_size = 16\n'
                      'attack = "ipm"\nattack_params = { epsilon = 3.0 }\n'
                      '[sweep]\naggregator = ["median"]\nattack_params.epsilon = [0.1, 10.0]\n'
                      'seeds = [0]\n[sweep.params.ipm]\nepsilon = 0.5\n')
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(config), "--out", str(out), "--jobs", "1",
                 "--no-plot"]) == 0
    table = read_csv(out / "sweep.csv")
    assert sorted(float(r["attack_params.epsilon"]) for r in table) == [0.1, 10.0]
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["aggregator=median__attack_params.epsilon=0.1__seed=0",
                    "aggregator=median__attack_params.epsilon=10.0__seed=0"]
    for run_dir, eps in zip(runs, (0.1, 10.0), strict=True):
        assert read_json(out / run_dir / "summary.json")["config"]["attack_params"] == {
            "epsilon": eps}
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace("attack_params.epsilon", "attack.epsilon"))
    capsys.readouterr()
    assert main(["sweep", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "is not a config field or a rule or attack parameter" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_in_parallel_processes(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text('[experiment]\ndataset = "synthetic"\nmodel = "logreg"\nworkers = 7\n'
                      'byzantine = 1\nrounds = 6\neval_every = 3\nbatch_size = 16\n'
                      '[sweep]\naggregator = ["mean", "krum"]\nseeds = [0]\n')
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "o"),
                 "--jobs", "2", "--quiet", "--no-plot"]) == 0
    assert len(read_csv(tmp_path / "o" / "sweep.csv")) == 2


@pytest.mark.slow
def test_console_script_demo_end_to_end(tmp_path):
    """What the README's main command runs, shortened: the installed `byzsgd` executable."""
    exe = Path(sys.executable).with_name("byzsgd")
    result = subprocess.run([str(exe), "demo", "--rounds", "10", "--eval-every", "5",
                             "--seeds", "0", "--out", str(tmp_path / "demo"), "--jobs", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "final acc" in result.stdout and "heatmap.png" in result.stdout
    assert len(read_csv(tmp_path / "demo" / "sweep.csv")) == 12


def test_run_never_silently_replaces_a_previous_run(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["run", *FAST, "--out", out]) == 0
    before = (Path(out) / "metrics.csv").read_text()
    assert main(["run", *FAST, "--lr", "0.1", "--out", out]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (Path(out) / "metrics.csv").read_text() == before
    assert main(["run", *FAST, "--lr", "0.1", "--out", out, "--overwrite"]) == 0
    assert read_json(Path(out) / "summary.json")["config"]["lr"] == 0.1
