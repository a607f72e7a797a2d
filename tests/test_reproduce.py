"""``byzsgd reproduce``: every experiment of experiments/ loads, resolves and validates at
full scale, its paper numbers name real table rows, and runs end to end in --quick mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from byzsgd import reproduce
from byzsgd.cli import main

EXPERIMENTS = reproduce.repo_root() / "experiments"
NAMES = reproduce.available(EXPERIMENTS)


def test_experiments_exist() -> None:
    assert len(NAMES) >= 12
    for prefix in ("alie-", "hv-", "foe-", "gen-"):
        assert any(n.startswith(prefix) for n in NAMES), prefix


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_experiment_resolves(name: str, quick: bool) -> None:
    exp = reproduce.load(name, EXPERIMENTS)
    pts = reproduce.points(exp, quick=quick)
    assert pts
    for p in pts:
        p.config.validate()
        if p.config.data_dir is not None:
            assert Path(p.config.data_dir).is_absolute()
    rows = {p.row for p in pts}
    unknown = set() if quick else set(exp.paper_values) - rows
    assert not unknown, f"[reproduce.paper] keys naming no row: {unknown}; rows: {rows}"
    for column in exp.columns:
        assert column in reproduce.METRICS
    if quick:  # minutes at most: tiny data and few rounds
        assert all(p.config.dataset in ("mnist-5k", "synthetic") for p in pts)
        assert all(p.config.rounds <= 20 for p in pts)
    else:  # the papers' scale runs on full MNIST from the shared data directory
        assert all(p.config.dataset == "mnist" for p in pts)


def test_data_dir_resolves_against_repo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.chdir(tmp_path)  # ../shared/data does not exist from here
    exp = reproduce.load("alie-table1", EXPERIMENTS)
    cfg = reproduce.points(exp)[0].config
    assert cfg.data_dir == str((reproduce.repo_root() / "../shared/data").resolve())


def test_unknown_experiment_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="alie-table1"):
        reproduce.load("no-such-experiment", EXPERIMENTS)


def test_list(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(reproduce.ENV_EXPERIMENTS, str(EXPERIMENTS))
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_quick_reproduction(name: str, tmp_path: Path) -> None:
    result = reproduce.reproduce(name, quick=True, out=tmp_path, jobs=1, quiet=True,
                                 directory=EXPERIMENTS, threads=1)
    table = (tmp_path / "table.md").read_text()
    assert "| setting |" in table and f"byzsgd reproduce {name} --quick" in table
    assert (tmp_path / "table.csv").exists() and (tmp_path / "reproduce.json").exists()
    assert result.figure is not None and result.figure.stat().st_size > 1000
    assert result.runs_executed == len(reproduce.points(reproduce.load(name, EXPERIMENTS),
                                                        quick=True))
    for row in result.table:
        assert row["seeds"] == 1
    # a second invocation finds every run complete and only rewrites the outputs
    again = reproduce.reproduce(name, quick=True, out=tmp_path, jobs=1, quiet=True,
                                directory=EXPERIMENTS, threads=1)
    assert again.runs_executed == 0
    # the wall clock reported over invocations adds the second one's to the first one's
    meta = json.loads((tmp_path / "reproduce.json").read_text())
    assert meta["wall_seconds_total"] == pytest.approx(result.wall_seconds + again.wall_seconds)


@pytest.mark.slow
def test_cli_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(reproduce.ENV_EXPERIMENTS, str(EXPERIMENTS))
    out = tmp_path / "out"
    assert main(["reproduce", "hv-fig6", "--quick", "--jobs", "1", "--quiet",
                 "--out", str(out)]) == 0
    assert (out / "table.md").exists() and (out / "figure.png").exists()
