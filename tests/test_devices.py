"""The ``device`` field: what it accepts, and a device this machine lacks refused before
anything runs, by the API and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from byzsgd import devices
from byzsgd.config import ConfigError, ExperimentConfig


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cpu:0", "auto:1", "", "cuda0"])
def test_malformed_device_is_refused_naming_the_field(spec):
    with pytest.raises(ConfigError, match="device"):
        ExperimentConfig(device=spec).validate()


def test_cpu_and_auto_resolve_here():
    assert devices.resolve("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert devices.resolve("auto").type == expected
    assert devices.parse("CUDA:2") == ("cuda", 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:7"])
def test_missing_cuda_is_refused_before_training(spec, tmp_path):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        ExperimentConfig(device=spec).validate()
    out = tmp_path / "run"
    cli = "import sys; from byzsgd.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", cli, "run", "--device", spec,
                           "--rounds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "device" in proc.stderr and "CUDA is not available" in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_count_is_refused():
    count = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"has {count} CUDA device"):
        ExperimentConfig(device=f"cuda:{count}").validate()


def test_default_device_is_not_recorded_and_others_are():
    assert "device" not in ExperimentConfig().to_dict()
    assert ExperimentConfig(device="auto").to_dict()["device"] == "auto"
