"""``byzsgd demo``: its table and files exist and the field's two lessons hold on its data
(the packaged demo with fewer rounds and seeds)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pytest

from byzsgd.demo import demo_config, format_matrix, run_demo, takeaway
from byzsgd.experiment import Sweep
from byzsgd.progress import SweepProgress


def _row(aggregator: str, attack: str, acc: float, selected: float = math.nan,
         seeds: int = 2) -> dict:
    return {"aggregator": aggregator, "attack": attack, "seeds": seeds,
            "final_test_accuracy_mean": acc, "final_test_accuracy_std": 0.01,
            "byzantine_selected_mean": selected}


def test_takeaway_reads_the_table() -> None:
    table = [_row("mean", "none", 0.92), _row("mean", "omniscient", 0.10),
             _row("mean", "alie", 0.92), _row("median", "none", 0.90),
             _row("median", "omniscient", 0.89), _row("median", "alie", 0.80),
             _row("krum", "none", 0.88, 0.0), _row("krum", "omniscient", 0.87, 0.0),
             _row("krum", "alie", 0.70, 0.97)]
    lines = takeaway(table)
    assert "omniscient" in lines[0] and "10.0%" in lines[0] and "median, krum" in lines[0]
    assert "crafted alie" in lines[1] and "krum 88.0% -> 70.0%" in lines[1]
    assert "97% of rounds under alie" in lines[1]
    assert "byzsgd reproduce --list" in lines[-1]
    # Another table, another story: the text follows the numbers.
    table[5]["final_test_accuracy_mean"] = 0.40
    table[8]["final_test_accuracy_mean"] = 0.86
    assert "median 90.0% -> 40.0%" in takeaway(table)[1]
    text = format_matrix(table)
    assert "2 seeds" in text and "+/-" in text and "krum selected a Byzantine vector in 97%" in text
    assert "(1 seed)" in format_matrix([_row("mean", "none", 0.9, seeds=1)])


def test_sweep_progress_shows_runs_done_and_time_left() -> None:
    stream = io.StringIO()
    progress = SweepProgress(10, "demo", stream=stream)
    progress.start -= 20.0  # 20 s for 4 runs: 30 s left for 6
    progress.update(4, "x")
    assert stream.getvalue().startswith("demo: 4/10 runs done | 20s elapsed | ~30s left")
    SweepProgress(3, enabled=False, stream=stream).update(1)
    assert stream.getvalue().count("\n") == 1


def test_demo_config_is_the_two_lessons() -> None:
    sweep = Sweep.from_toml(demo_config())
    assert {"mean", "krum"} <= set(sweep.axes["aggregator"])
    assert {"none", "omniscient", "alie", "ipm"} <= set(sweep.axes["attack"])
    assert len(sweep.seeds) >= 3


@pytest.mark.slow
def test_demo_shows_the_two_lessons(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = run_demo(tmp_path, overrides={"rounds": 30}, seeds=[0, 1], jobs=1, quiet=True)
    for name in ("sweep.csv", "demo.txt", "heatmap.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "final acc % (2 seeds)" in printed and "Next:" in printed
    assert captured.err == "", captured.err  # quiet: no per-run lines (e.g. "diverged")
    acc = {(r["aggregator"], r["attack"]): 100 * r["final_test_accuracy_mean"]
           for r in result.table}
    robust = ["median", "krum"]
    # Lesson 1: the crude attack destroys the mean, every robust rule holds.
    assert acc[("mean", "omniscient")] < 20
    for rule in robust:
        assert acc[(rule, "omniscient")] > acc[("mean", "omniscient")] + 50
    # Lesson 2: the crafted attack lowers a robust rule, or Krum picks the Byzantine vector.
    krum = next(r for r in result.table if (r["aggregator"], r["attack"]) == ("krum", "alie"))
    assert (max(acc[(r, "none")] - acc[(r, a)] for r in robust for a in ("alie", "ipm")) > 3
            or krum["byzantine_selected_mean"] > 0.5)
    # The takeaway names the rules that held and the attack that hurt most.
    assert "median, krum held" in result.takeaway[0] and "omniscient" in result.takeaway[0]
    attacks = {a for _, a in acc} - {"none", "omniscient"}
    hurt = max(attacks, key=lambda a: sum(acc[(r, "none")] - acc[(r, a)] for r in robust))
    assert f"crafted {hurt} hurt" in result.takeaway[1]


def test_numba_cache_cold_and_warm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from byzsgd import _numba_cache

    monkeypatch.setattr(_numba_cache, "PACKAGE", tmp_path)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "user"))
    modules = ("aggregators/_gram.py", "engine/sparse.py")
    for m in modules:
        (tmp_path / m).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / m).write_text("")
    assert _numba_cache.is_cold(modules)
    (tmp_path / "aggregators" / "__pycache__").mkdir(parents=True)
    (tmp_path / "aggregators" / "__pycache__" / "_gram._gram_range-344.py311.nbi").touch()
    assert _numba_cache.is_cold(modules)  # sparse still missing
    [user] = [d for d in _numba_cache.cache_dirs(("engine/sparse.py",))
              if d.is_relative_to(tmp_path / "user")]
    user.mkdir(parents=True)
    (user / "sparse._linear-100.py311.nbi").touch()
    assert not _numba_cache.is_cold(modules)


def test_numba_cache_is_found_where_numba_writes_it(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """numba's own cache (here NUMBA_CACHE_DIR: a read-only install's kernels go to numba's
    user-wide cache by the same per-file subpath) is where is_cold looks."""
    import subprocess
    import sys

    from byzsgd import _numba_cache

    source = tmp_path / "pkg" / "engine" / "sparse.py"
    source.parent.mkdir(parents=True)
    source.write_text("import numba\n\n@numba.njit(cache=True)\ndef twice(x):\n"
                      "    return 2 * x\n")
    monkeypatch.setattr(_numba_cache, "PACKAGE", tmp_path / "pkg")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "user"))
    assert _numba_cache.is_cold(("engine/sparse.py",))
    subprocess.run([sys.executable, "-c", "import sparse; assert sparse.twice(3) == 6"],
                   cwd=source.parent, check=True, env={**os.environ})
    assert not list((source.parent / "__pycache__").glob("*.nbi"))  # numba wrote elsewhere
    assert not _numba_cache.is_cold(("engine/sparse.py",))
