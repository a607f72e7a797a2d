"""The rules on CUDA tensors (issue 13): skipped on a machine without CUDA.

Run by ``scripts/gpu-check.sh`` on a GPU machine. A rule given CUDA rows computes on the GPU
with the torch kernels (impl="auto" picks them there), returns a CUDA tensor, and its value
equals the compiled CPU result to float tolerance (exactly for the selections).
"""

from __future__ import annotations

import pytest
import torch

from byzsgd import aggregators
from byzsgd.aggregators import _gram, _linf, _orderstats
from byzsgd.aggregators import _registry as registry
from byzsgd.attacks import _moments
from byzsgd.data import Dataset
from byzsgd.kernels import torch_impl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

N, F, D = 11, 2, 4099


def _inputs(kind: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = (3.0 + torch.randn(N, D, generator=g, dtype=torch.float64)).to(dtype)
    if kind == "ties":
        x = torch.randint(-2, 3, (N, D), generator=g).to(dtype)
        x[N - 3:] = x[0]
    elif kind == "hostile":
        x[N - 1, 5] = float("nan")
        x[N - 2, :] = float("inf")
        x[0, 3] = 1e30
    return x


def _close(gpu: torch.Tensor, cpu: torch.Tensor, dtype: torch.dtype) -> None:
    assert gpu.is_cuda and gpu.dtype == cpu.dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", ["random", "ties", "hostile"])
@pytest.mark.parametrize("rule", registry.names())
def test_rule_on_cuda_returns_cuda_equal_to_cpu(rule: str, kind: str,
                                                dtype: torch.dtype) -> None:
    x = _inputs(kind, dtype)
    cpu = aggregators.aggregate(rule, x, F, impl="compiled")
    gpu = aggregators.aggregate(rule, x.cuda(), F)
    _close(gpu.value, cpu.value, dtype)
    if cpu.selected is not None:
        assert torch.equal(gpu.selected.cpu(), cpu.selected)


def test_compiled_refuses_cuda_rows() -> None:
    with pytest.raises(ValueError, match="impl='compiled' needs a CPU"):
        aggregators.get("median")(torch.zeros(3, 4, device="cuda"), 1, impl="compiled")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kernels_on_cuda(dtype: torch.dtype) -> None:
    x = _inputs("hostile", dtype)
    xc = x.cuda()
    _close(torch_impl.centered_gram(xc, xc[1]), _gram.centered_gram(x, x[1]), dtype)
    _close(torch_impl.coordinate_median(xc), _orderstats.coordinate_median(x), dtype)
    _close(torch_impl.coordinate_trimmed_mean(xc, F),
           _orderstats.coordinate_trimmed_mean(x, F), dtype)
    _close(torch_impl.coordinate_mean_around_median(xc, N - F),
           _orderstats.coordinate_mean_around_median(x, N - F), dtype)
    clean = _inputs("random", dtype)
    _close(torch_impl.linf_distances(clean.cuda()), _linf.linf_distances(clean), dtype)
    for a, b in zip(torch_impl.mean_std(clean.cuda()), _moments.mean_std(clean), strict=True):
        _close(a, b, dtype)


def test_half_precision_on_cuda_is_promoted_to_float32() -> None:
    x = _inputs("random", torch.float32).cuda().half()
    out = aggregators.get("median")(x, F)
    assert out.is_cuda and out.dtype == torch.float32


# -- whole runs on the GPU (issue 13: the engine places everything on config.device) --------

RUN = dict(rounds=3, eval_every=3, workers=7, byzantine=1, batch_size=8, eval_train_samples=64,
           aggregator="trimmed-mean", attack="alie", seed=5)


def _cifar_shaped() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (600,), generator=g)
    return Dataset.from_tensors(x[:500], y[:500], x[500:], y[500:], num_classes=10,
                                name="cifar-shaped")


def _run(tmp_path, name: str, **values) -> tuple[dict, torch.Tensor, list[str]]:
    import byzsgd
    from byzsgd.results import load_checkpoint

    out = tmp_path / name
    summary = byzsgd.run(out=out, **{**RUN, **values})
    theta = load_checkpoint(out / "checkpoint.pt")["theta"]
    rows = (out / "rounds.csv").read_text().splitlines() + [
        r.rsplit(",", 1)[0] for r in (out / "metrics.csv").read_text().splitlines()]
    return summary, theta, rows


@pytest.mark.parametrize("model", ["mlp", "cnn-cifar"])
def test_a_run_on_cuda_end_to_end(tmp_path, model: str) -> None:
    values = {"model": model}
    if model == "cnn-cifar":
        values["dataset"] = _cifar_shaped()
    summary, theta, _ = _run(tmp_path, "run", device="cuda", **values)
    assert summary["status"] == "complete" and summary["device"].startswith("cuda:")
    assert summary["rounds_done"] == RUN["rounds"] and torch.isfinite(theta).all()
    auto, _, _ = _run(tmp_path, "auto", device="auto", **values)
    assert auto["device"] == f"cuda:{torch.cuda.current_device()}"


@pytest.mark.parametrize("model", ["mlp", "cnn-cifar"])
def test_cuda_and_cpu_runs_agree_to_float_tolerance(tmp_path, model: str) -> None:
    """Same batches, same draws (made on the CPU), other kernels: close, not equal."""
    values = {"model": model}
    if model == "cnn-cifar":
        values["dataset"] = _cifar_shaped()
    _, on_cpu, _ = _run(tmp_path, "cpu", device="cpu", **values)
    _, on_gpu, _ = _run(tmp_path, "gpu", device="cuda", **values)
    assert on_gpu.device.type == "cpu"  # checkpoints hold CPU tensors
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("model", ["mlp", "cnn-cifar"])
def test_same_seed_same_floats_on_cuda(tmp_path, model: str) -> None:
    values = {"model": model}
    if model == "cnn-cifar":
        values["dataset"] = _cifar_shaped()
    _, first, rows_first = _run(tmp_path, "a", device="cuda", **values)
    _, second, rows_second = _run(tmp_path, "b", device="cuda", **values)
    assert torch.equal(first, second) and rows_first == rows_second


def test_the_engine_places_every_tensor_of_a_round_on_cuda() -> None:
    from byzsgd.config import ExperimentConfig
    from byzsgd.engine.setup import build
    from byzsgd.engine.simulator import Simulation

    setup = build(ExperimentConfig(**{**RUN, "device": "cuda"}))
    sim = Simulation(setup, out=None)  # type: ignore[arg-type] - no files written here
    assert setup.device.type == "cuda" and sim.theta.is_cuda
    assert setup.dataset.y_train.is_cuda and setup.sampler.indices(0).is_cuda
    assert setup.flat.method == "vmap" and setup.flat.sparse_inputs is None
    sim.round(0)
    assert sim.workspace.matrix.is_cuda and sim.theta.is_cuda
    assert set(sim.evaluate()) >= {"test_accuracy", "train_loss"}


def test_a_data_set_that_does_not_fit_travels_per_batch_from_pinned_memory() -> None:
    from byzsgd.engine import memory, placement

    ds = _cifar_shaped()
    cuda = torch.device("cuda")
    placed, on_device = placement.place_dataset(ds, cuda, budget=0)
    assert not on_device and placed.x_train.is_pinned() and placed.y_train.is_cuda
    samples = torch.tensor([[3, 1], [4, 1]], device=cuda)
    batch = placement.gather(placed.x_train, samples, cuda)
    assert batch.is_cuda and torch.equal(batch.cpu(), ds.x_train[samples.cpu()])
    whole, on_device = placement.place_dataset(ds, cuda, budget=10**12)
    assert on_device and whole.x_train.is_cuda and whole.x_test.is_cuda
    _, total = torch.cuda.mem_get_info(cuda)
    assert 0 < memory.free_bytes(cuda) <= total
