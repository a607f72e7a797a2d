"""The distributed runtime's devices (byzsgd/distributed/placement.py): which device each
process uses, GPU tensors staged through host memory, and runs with ``--device cpu``/``auto``
on loopback."""

from __future__ import annotations

import pytest
import torch
from test_distributed import assert_same_numbers, cfg, distributed

from byzsgd.devices import DeviceError
from byzsgd.distributed import protocol
from byzsgd.distributed.placement import local_rank, process_device, to_host
from byzsgd.distributed.protocol import Kind, Message
from byzsgd.experiment import run
from byzsgd.results import read_json


@pytest.mark.parametrize(("spec", "rank", "count", "want"), [
    ("cpu", 3, 8, "cpu"),                # the CPU whatever the GPUs
    ("auto", 3, 0, "cpu"),               # no GPU: auto is the CPU
    ("auto", 3, 8, "cuda:3"),            # a GPU each while there are enough
    ("cuda", 0, 8, "cuda:0"),            # the lead server
    ("cuda", 9, 8, "cuda:1"),            # more processes than GPUs: shared round-robin
    ("cuda", 5, 1, "cuda:0"),            # one GPU: everyone shares it
    ("cuda:2", 7, 4, "cuda:2"),          # an explicit index pins every process
    ("CUDA", 2, 2, "cuda:0"),            # written as the config field accepts it
    ("mps", 4, 0, "mps"),
])
def test_process_device_maps_local_rank_to_a_gpu(spec, rank, count, want):
    assert process_device(spec, rank, count) == want


@pytest.mark.parametrize(("spec", "count", "message"), [
    ("cuda", 0, "no CUDA device"),
    ("cuda:4", 4, "this machine has 4 CUDA device(s), cuda:0 to cuda:3"),
    ("gpu", 2, "device must be one of"),
])
def test_process_device_refuses_what_does_not_exist(spec, count, message):
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        process_device(spec, 0, count)


def test_process_device_refuses_a_negative_rank():
    with pytest.raises(ValueError, match="local rank must be >= 0, got -1"):
        process_device("cuda", -1, 2)


def test_local_rank_prefers_the_launchers_variable(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_rank(5) == 5
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_rank(5) == 1


def test_host_tensors_travel_as_they_are():
    t = torch.arange(6, dtype=torch.float32)
    assert to_host(t) is t
    assert protocol.as_bytes(t).data_ptr() == t.data_ptr()  # a view, no copy (as before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_tensors_are_staged_through_pinned_memory():
    t = torch.arange(6, dtype=torch.float32, device="cuda")
    host = to_host(t)
    assert host.device.type == "cpu" and host.is_pinned() and torch.equal(host, t.cpu())
    msg = Message(Kind.VEC, 3, [t[1:5]])
    assert torch.equal(protocol.as_bytes(msg.parts[0]).view(torch.float32).reshape(-1),
                       t[1:5].cpu())


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_distributed_runs_on_the_configured_device_with_the_simulators_numbers(tmp_path,
                                                                              device):
    """Two servers and three workers, each process resolving the device itself (``auto``:
    the CPU on a machine without CUDA); the lead records the device as configured."""
    config = cfg(servers=2, workers=3, aggregator="trimmed-mean", attack="alie", rounds=4,
                 eval_every=2)
    run(config, tmp_path / "sim")
    result = distributed(config, tmp_path / "dist", "--device", device, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    if device == "cpu" or not torch.cuda.is_available():  # auto is the CPU here
        assert_same_numbers(tmp_path / "sim", tmp_path / "dist")
    recorded = read_json(tmp_path / "dist" / "summary.json")["config"].get("device", "cpu")
    assert recorded == device
