"""The benchmarks stay runnable (their numbers are read by people, not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_aggregators_benchmark_quick():
    out = run_script("benchmarks/aggregators.py", "--quick")
    for rule in ("median", "krum", "bulyan", "sum(0) read"):
        assert rule in out


@pytest.mark.slow
def test_rounds_benchmark_short():
    out = run_script("benchmarks/rounds.py", "--rounds", "4", "--warmup", "1")
    assert "median" in out and "krum" in out and "rounds/s" in out


@pytest.mark.slow
def test_gradients_benchmark_short():
    out = run_script("benchmarks/gradients.py", "--repeats", "1", "--workers", "3",
                     "--batch", "4")
    assert "mlp-2x128" in out and "vmap/mlp" in out


@pytest.mark.slow
def test_attacks_benchmark_quick():
    out = run_script("benchmarks/attacks.py", "--quick", "--no-byzfl", "--repeats", "1")
    for attack in ("x read", "min-max", "min-sum", "fang-krum", "fang-trim", "mimic",
                   "optimal-alie", "optimal-ipm"):
        assert attack in out


@pytest.mark.slow
def test_gradients_benchmark_conv_table_short():
    out = run_script("benchmarks/gradients.py", "--conv", "--repeats", "1", "--workers", "3",
                     "--batch", "2", "--chunks", "2", "--models", "cnn-cifar")
    assert "cnn-cifar" in out and "vmap/loop" in out and "chunk2/loop" in out
