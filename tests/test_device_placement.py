"""A run computes on its config's device (issue 13), checked on the CPU.

The main check: with torch's default device set to ``meta``, every tensor created without an
explicit device lands on meta and the run fails at its first use; a run with ``device="cpu"``
that completes under it proves that every tensor the round, the attack, the rule, the step
and the evaluation create follows the configured device (or is drawn, on purpose, on the CPU).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from byzsgd import api
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.engine import memory, placement
from byzsgd.engine.setup import build
from byzsgd.engine.simulator import Simulation
from byzsgd.experiment import run
from byzsgd.results import load_checkpoint

QUICK = dict(rounds=3, eval_every=3, workers=7, byzantine=1, batch_size=8,
             eval_train_samples=64)


def _final(out: Path) -> list[str]:
    """rounds.csv and metrics.csv without the timing column."""
    rows = (out / "metrics.csv").read_text().splitlines()
    return (out / "rounds.csv").read_text().splitlines() + [r.rsplit(",", 1)[0] for r in rows]


@pytest.mark.parametrize("values", [
    # the MNIST MLP: sparse first layer, hand-written backward, Krum, an attack on honest rows
    dict(aggregator="krum", attack="alie"),
    # a conv net (loop over workers, dropout), a label-flipping attack, momentum, 2 servers
    dict(dataset="synthetic", model="cnn-fall", aggregator="median", attack="label-flip",
         momentum=0.9, servers=2),
    # vmap, a dimensional attack, model averaging
    dict(dataset="synthetic", model="logreg", aggregator="trimmed-mean", attack="bit-flip",
         mode="model-averaging", local_steps=2),
    # the pattern backdoor: its batches and its evaluation
    dict(dataset="synthetic", model="mlp", aggregator="mean", attack="alie-backdoor",
         backdoor="pattern"),
    # attacks that draw noise (on the CPU, then moved) or assemble the rule's input
    dict(dataset="synthetic", model="logreg", aggregator="trimmed-mean", attack="fang-trim"),
    dict(dataset="synthetic", model="logreg", aggregator="centered-clipping",
         attack="gaussian"),
    dict(dataset="synthetic", model="logreg", aggregator="median", attack="optimal-alie"),
], ids=["mlp-krum", "cnn-median-flip", "logreg-averaging-bitflip", "backdoor", "fang-trim",
        "cclip-gaussian", "optimal-alie"])
def test_every_tensor_of_a_run_follows_the_configured_device(tmp_path, values):
    config = ExperimentConfig(**{**QUICK, **values})
    setup = build(config)
    reference = Simulation(build(config), tmp_path / "reference").run()
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        summary = Simulation(setup, tmp_path / "meta").run()
    finally:
        torch.set_default_device(previous)
    assert summary["status"] == "complete" and summary["device"] == "cpu"
    assert _final(tmp_path / "meta") == _final(tmp_path / "reference")
    assert reference["final_test_accuracy"] == summary["final_test_accuracy"]


def test_the_meta_check_catches_a_tensor_created_without_the_device(tmp_path, monkeypatch):
    """The check of the test above can fail: a round that allocates its received matrix
    without the run's device breaks under the meta default."""
    from byzsgd.engine import round as round_module

    setup = build(ExperimentConfig(**QUICK, aggregator="mean"))

    def arrange(self, byzantine, *, all_rows):
        self.k = self.n
        self.worker_of_row = torch.arange(self.n, device="cpu")
        self.computed = self.worker_of_row.tolist()
        self.matrix = torch.empty((self.n, self.d), dtype=self.dtype)  # no device
        return self

    monkeypatch.setattr(round_module.Workspace, "arrange", arrange)
    torch.set_default_device("meta")
    try:
        with pytest.raises((RuntimeError, NotImplementedError)):
            Simulation(setup, tmp_path).run()
    finally:
        torch.set_default_device(None)


def test_same_seed_same_device_same_floats_and_auto_is_the_cpu_here(tmp_path):
    values = dict(QUICK, aggregator="krum", attack="alie")
    run(ExperimentConfig(**values), tmp_path / "a")
    run(ExperimentConfig(**values), tmp_path / "b")
    auto = run(ExperimentConfig(**values, device="auto"), tmp_path / "auto")
    assert _final(tmp_path / "a") == _final(tmp_path / "b")
    if not torch.cuda.is_available():
        assert auto["device"] == "cpu"
        assert _final(tmp_path / "auto") == _final(tmp_path / "a")


def test_api_records_the_device_used_and_resumes_a_run_recorded_before_the_field(tmp_path):
    summary = api.run(out=tmp_path / "auto", device="auto", **QUICK)
    used = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert summary["device"] == used
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["device"] == used
    toml = (tmp_path / "auto" / "config.toml").read_text()
    assert toml.startswith(f"# device used: {used}\n") and 'device = "auto"' in toml
    # the default device is not written into the config: a checkpoint of a run recorded
    # before the field existed holds the same config dict, and resumes
    cpu = api.run(out=tmp_path / "cpu", **QUICK)
    assert "device" not in cpu["config"] and "device used" not in \
        (tmp_path / "cpu" / "config.toml").read_text()
    checkpoint = load_checkpoint(tmp_path / "cpu" / "checkpoint.pt")
    assert "device" not in checkpoint["config"] and checkpoint["theta"].device.type == "cpu"
    resumed = api.run(out=tmp_path / "cpu", resume=True, **QUICK)  # a different config raises
    assert resumed["rounds_done"] == QUICK["rounds"] and resumed["status"] == "complete"


def test_cli_run_with_device_auto(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--device", "auto", "--out", str(out), "--rounds", "2", "--eval-every", "2",
            "--workers", "5", "--byzantine", "1", "--batch-size", "8", "--quiet"]
    code = "import sys; from byzsgd.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert summary["config"]["device"] == "auto"


def test_memory_bound_fails_before_training_with_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 800_000)
    config = ExperimentConfig(**{**QUICK, "workers": 25, "byzantine": 5})
    with pytest.raises(memory.MemoryBoundError) as caught:
        run(config, tmp_path / "run")
    message = str(caught.value)
    d = build(config, free_memory=10**12).flat.d  # 79,510 for the MNIST MLP
    assert f"the received matrix needs 25 x {d / 1e3:.1f}k x 4 B = " \
           f"{25 * d * 4 / 1e6:.1f} MB" in message
    assert "the device has 800.0 kB free" in message and "on cpu" in message
    assert isinstance(caught.value, ConfigError)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_memory_bound_through_the_cli_exits_with_the_message(tmp_path):
    code = ("import sys; from byzsgd.engine import memory; "
            "memory.free_bytes = lambda device: 1000; "
            "from byzsgd.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", "--out", str(tmp_path / "r"),
                           "--rounds", "1", "--quiet"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2
    assert "the received matrix needs 25 x 79.5k x 4 B = 8.0 MB" in proc.stderr
    assert "the device has 1.0 kB free" in proc.stderr


def test_round_needs_counts_matrix_gradients_and_activations():
    mlp = memory.round_needs(25, 1000, torch.float32, batch=32, method="mlp", activations=10)
    assert (mlp.received, mlp.gradients, mlp.working_set) == (100_000, 0, 2 * 800 * 10 * 4)
    vmap = memory.round_needs(25, 1000, torch.float32, batch=32, method="vmap",
                              activations=10)
    assert vmap.gradients == 100_000 and vmap.total == mlp.total + 100_000
    loop = memory.round_needs(25, 1000, torch.float64, batch=32, method="loop",
                              activations=10)
    assert loop.working_set == 2 * 32 * 10 * 8 and loop.received == 200_000
    memory.check(vmap, vmap.total, "cpu")  # fits exactly
    with pytest.raises(memory.MemoryBoundError, match=re.escape("25 x 1.0k x 4 B = 100.0 kB")):
        memory.check(vmap, vmap.total - 1, "cpu")


def test_activations_per_example_counts_every_layer_output_and_leaves_the_module_alone():
    module = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.BatchNorm1d(7), nn.ReLU(),
                           nn.Linear(7, 3))
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    assert memory.activations_per_example(module, torch.ones(3, 4)) == 12 + 12 + 7 + 7 + 7 + 3
    assert module.training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_free_bytes_on_the_cpu_is_positive():
    assert memory.free_bytes(torch.device("cpu")) > 0


def test_placement_helpers():
    assert placement.device_name(torch.device("cpu")) == "cpu"
    assert placement.cpu_fast_paths(torch.device("cpu"))
    assert not placement.cpu_fast_paths(torch.device("cuda", 0))
    x = torch.arange(60.0).view(5, 3, 4)
    samples = torch.tensor([[4, 0], [2, 2]])
    assert torch.equal(placement.gather(x, samples, torch.device("cpu")), x[samples])
    # from the CPU to another device: gathered where the data is, then copied
    moved = placement.gather(x, samples, torch.device("meta"))
    assert moved.device.type == "meta" and moved.shape == (2, 2, 3, 4)
    tree = {"a": x, "b": [x, 3], "c": None}
    on_meta = placement.to_device(tree, torch.device("meta"))
    assert on_meta["a"].is_meta and on_meta["b"][0].is_meta and on_meta["b"][1] == 3


def test_the_compiled_cpu_paths_are_chosen_on_the_cpu_only():
    from byzsgd.engine.flatmodel import FlatModel

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.ReLU(), nn.Linear(10, 10))
    assert FlatModel(mlp).method == "mlp"
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    assert FlatModel(conv).method == "loop"
    assert FlatModel(mlp.to("meta")).method == "vmap"
    assert FlatModel(conv.to("meta")).method == "vmap"


def test_place_dataset_keeps_a_cpu_dataset_as_it_is():
    setup = build(ExperimentConfig(**QUICK))
    placed, on_device = placement.place_dataset(setup.dataset, torch.device("cpu"), 0)
    assert placed is setup.dataset and on_device
