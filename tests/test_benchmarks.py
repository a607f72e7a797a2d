"""The benchmarks stay runnable and honest about what they compare (their numbers are read by
people, not asserted here): every header names the machine, the other libraries are measured
side by side when their interpreter is at hand (skipped otherwise), and without them the
anchor numbers are quoted with their machine instead of divided by."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _foreign  # noqa: E402
import _machine  # noqa: E402
import _report  # noqa: E402

#: The interpreter with ByzFL and byzpy (this project's side environment), when present.
BYZFL_PYTHON = os.environ.get(_foreign.ENV_PYTHON) or "/work/wt/byzfl-venv/bin/python"
BYZFL_PATH = os.environ.get(_foreign.ENV_PATH) or "/work/wt/byzfl-stub"
needs_byzfl = pytest.mark.skipif(not Path(BYZFL_PYTHON).exists(),
                                 reason=f"no interpreter with ByzFL at {BYZFL_PYTHON}")
HEADER_LINES = ("machine:", "vector flags:", "threads used:", "load average (uptime):",
                "kernel variant:")


def run_script(*args: str, cwd: Path = ROOT) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in (_foreign.ENV_PYTHON, _foreign.ENV_PATH)}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            cwd=cwd, timeout=900, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def rows(out: str) -> dict[str, list[str]]:
    """The text table's rows by first cell (operation or attack name)."""
    table = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4:
            table.setdefault(cells[0], cells)
    return table


def test_vector_flags_name_the_width():
    assert _machine.vector_flags({"sse4_2", "avx", "avx2", "fma"}) == \
        ["sse4_2", "avx", "avx2", "fma"]
    assert "avx512f" in _machine.vector_flags({"avx2", "avx512f"})
    assert "neon" in _machine.vector_flags({"fp", "asimd"})


def test_header_names_the_machine():
    lines = _machine.describe(threads=3)
    for start, line in zip(HEADER_LINES, lines, strict=True):
        assert start in line
    assert "threads used: 3" in lines[2]
    assert "torch" in lines[2] and "numba" in lines[2]


def test_quote_line_names_numbers_and_machine():
    line = _foreign.quote_line("ByzFL 0.0.11", ["median", "meamed"])
    assert line.startswith("ByzFL not installed: quoting median 637 ms")
    assert "meamed 3808 ms from AMD EPYC Zen 3" in line and "(ANCHORS.md)" in line
    assert "krum" not in line  # only the operations asked for
    assert _foreign.rounds_quote_line().startswith("ByzFL not installed: quoting")


def test_find_python_order(monkeypatch):
    monkeypatch.setenv(_foreign.ENV_PYTHON, "/from/env")
    assert _foreign.find_python("/explicit") == "/explicit"
    assert _foreign.find_python("none") is None
    expected = sys.executable if __import__("importlib").util.find_spec("byzfl") \
        else "/from/env"
    assert _foreign.find_python(None) == expected


def test_command_names_the_interpreter_it_used(monkeypatch):
    monkeypatch.setenv(_foreign.ENV_PYTHON, "/env/python")
    monkeypatch.delenv(_foreign.ENV_PATH, raising=False)
    assert _foreign.command("rounds.py", ["--rounds", "3"], None) == \
        "BYZSGD_BYZFL_PYTHON=/env/python python benchmarks/rounds.py --rounds 3"
    assert _foreign.command("rounds.py", ["--byzfl-python", "/p"], "/p") == \
        "python benchmarks/rounds.py --byzfl-python /p"


def test_write_section_replaces_only_its_own(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("# Title\n\nintro\n")
    _report.write_section(path, "rounds", "first")
    _report.write_section(path, "attacks", "other")
    _report.write_section(path, "rounds", "second")
    text = path.read_text()
    assert text.startswith("# Title\n\nintro\n")
    assert "second" in text and "first" not in text and "other" in text
    assert text.count("<!-- rounds:begin -->") == 1


def test_aggregators_without_byzfl_quotes_anchors(tmp_path):
    md = tmp_path / "bench.md"
    out = run_script("benchmarks/aggregators.py", "--d", "1000", "--repeats", "1",
                     "--byzfl-python", "none", "--markdown", str(md))
    for start in HEADER_LINES:
        assert start in out
    assert "ByzFL not installed: quoting" in out and "byzpy not installed: quoting" in out
    table = rows(out)
    for name in ("median", "krum", "bulyan", "centered-clipping", "nnm", "arc", "bucketing",
                 "clipping", "nnm+krum"):
        assert table[name][4] == "-", table[name]  # x ByzFL: nothing divided
    assert "brute" not in table
    text = md.read_text()
    assert "<!-- aggregators:begin -->" in text and "| median |" in text
    assert "ByzFL not installed: quoting" in text


@needs_byzfl
@pytest.mark.slow
def test_aggregators_with_byzfl_side_by_side():
    out = run_script("benchmarks/aggregators.py", "--d", "1000", "--repeats", "1",
                     "--byzfl-python", BYZFL_PYTHON, "--byzfl-pythonpath", BYZFL_PATH)
    assert "not installed" not in out
    assert "ByzFL 0.0.11" in out
    table = rows(out)
    for name in ("median", "trimmed-mean", "krum", "multi-krum", "meamed", "nnm", "arc",
                 "bucketing", "clipping", "centered-clipping"):
        assert table[name][4].endswith("x"), table[name]  # x ByzFL measured
    for name in ("median", "krum", "nnm"):
        assert table[name][6].endswith("x"), table[name]  # x byzpy measured
    assert table["bulyan"][4] == "-"  # ByzFL has no Bulyan


def test_attacks_without_byzfl():
    out = run_script("benchmarks/attacks.py", "--d", "1000", "--no-byzfl", "--repeats", "1")
    assert "machine:" in out and "ByzFL not installed" in out
    for attack in ("min-max", "min-sum", "fang-krum", "fang-trim", "mimic", "optimal-alie",
                   "optimal-ipm", "sign-flip", "gaussian"):
        assert attack in out
    assert rows(out)["alie"][5] == "-"


@needs_byzfl
@pytest.mark.slow
def test_attacks_with_byzfl_side_by_side():
    out = run_script("benchmarks/attacks.py", "--d", "1000", "--repeats", "1",
                     "--byzfl-python", BYZFL_PYTHON, "--byzfl-pythonpath", BYZFL_PATH)
    table = rows(out)
    for attack in ("alie", "ipm", "optimal-alie"):
        assert table[attack][-3].endswith("x"), table[attack]


@pytest.mark.slow
def test_rounds_benchmark_short(tmp_path):
    """Run from a folder without ../shared/data beside it: the mnist-5k fallback picks a
    batch its 78-sample shards hold, and says so."""
    script = ROOT / "benchmarks" / "rounds.py"
    out = run_script(str(script), "--rounds", "3", "--warmup", "1", "--data-dir", "",
                     "--byzfl-python", "none", cwd=tmp_path)
    assert "batch 78, not 83" in out
    assert "ByzFL not installed: quoting" in out and "machine:" in out
    table = rows(out)
    assert table["median"][2] != "-" and table["krum"][7] == "-"


@needs_byzfl
@pytest.mark.slow
def test_rounds_with_byzfl_side_by_side():
    out = run_script("benchmarks/rounds.py", "--rounds", "3", "--warmup", "1", "--block", "1",
                     "--data-dir", "", "--byzfl-python", BYZFL_PYTHON,
                     "--byzfl-pythonpath", BYZFL_PATH)
    assert "not installed" not in out
    table = rows(out)
    assert float(table["median"][7]) > 0 and table["krum"][8].endswith("x")


@pytest.mark.slow
def test_gradients_benchmark_short():
    out = run_script("benchmarks/gradients.py", "--repeats", "1", "--workers", "3",
                     "--batch", "4")
    assert "mlp-2x128" in out and "vmap/mlp" in out


@pytest.mark.slow
def test_gradients_benchmark_conv_table_short():
    out = run_script("benchmarks/gradients.py", "--conv", "--repeats", "1", "--workers", "3",
                     "--batch", "2", "--chunks", "2", "--models", "cnn-cifar")
    assert "cnn-cifar" in out and "vmap/loop" in out and "chunk2/loop" in out
