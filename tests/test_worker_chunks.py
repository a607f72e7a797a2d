"""How the workers' gradients are batched (byzsgd/engine/flatmodel.py): the rule per device,
vmap in chunks of workers equal to one vmap over all, and the working-set estimate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from byzsgd.engine import flatmodel
from byzsgd.engine.flatmodel import (
    FlatModel,
    default_method,
    saved_bytes,
    vmap_bytes,
    worker_chunk,
)


def small_cnn(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Dropout(dropout), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def batch(n: int, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, b, 3, 6, 6, generator=g), torch.randint(0, 5, (n, b), generator=g)


@pytest.mark.parametrize(("module", "dense", "device", "want"), [
    (small_cnn(), False, "cpu", "loop"),   # measured: the loop beats vmap for convs on CPU
    (small_cnn(), False, "cuda", "vmap"),  # one batched launch per layer on a GPU
    (nn.Sequential(nn.Linear(4, 3)), True, "cpu", "mlp"),
    (nn.Sequential(nn.Linear(4, 3)), True, "cuda", "vmap"),  # the MLP backward is CPU-only
    (nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), False, "cpu", "vmap"),
])
def test_default_method_per_model_and_device(module, dense, device, want):
    assert default_method(module, dense, device) == want


def test_conv_nets_keep_the_loop_on_cpu_by_default():  # the same floats as before
    assert FlatModel(small_cnn()).method == "loop"


@pytest.mark.parametrize(("n", "per_worker", "budget", "want"), [
    (25, 100, 10_000, 25),   # all fit
    (25, 100, 1_000, 10),    # ten fit
    (25, 100, 99, 1),        # not even one: one at a time
    (1, 5, 0, 1),
])
def test_worker_chunk(n, per_worker, budget, want):
    assert worker_chunk(n, per_worker, budget) == want


@pytest.mark.parametrize(("args", "message"), [
    ((0, 10, 100), "worker_chunk needs n >= 1, got n=0"),
    ((5, 0, 100), "worker_chunk needs per_worker >= 1 byte, got 0"),
])
def test_worker_chunk_preconditions(args, message):
    with pytest.raises(ValueError, match=message):
        worker_chunk(*args)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_chunks_of_workers_equal_one_vmap_over_all(chunk):
    module = small_cnn()
    x, y = batch(5)
    full = FlatModel(module, method="vmap", chunk=5)
    part = FlatModel(module, method="vmap", chunk=chunk)
    theta = full.initial()
    torch.testing.assert_close(part.worker_gradients(theta, x, y),
                               full.worker_gradients(theta, x, y), rtol=1e-5, atol=1e-6)
    thetas = theta + 0.01 * torch.randn(5, theta.numel(), generator=torch.Generator()
                                        .manual_seed(2))
    torch.testing.assert_close(part.local_gradients(thetas, x, y),
                               full.local_gradients(thetas, x, y), rtol=1e-5, atol=1e-6)
    loop = FlatModel(module, method="loop")
    torch.testing.assert_close(part.worker_gradients(theta, x, y),
                               loop.worker_gradients(theta, x, y), rtol=1e-4, atol=1e-5)


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk must be >= 1 worker, got 0"):
        FlatModel(small_cnn(), method="vmap", chunk=0)


def test_automatic_chunks_follow_the_memory_budget(monkeypatch):
    module = small_cnn()
    x, y = batch(7)
    per_worker = vmap_bytes(module, (3, 6, 6), 3, 1)
    flat = FlatModel(module, method="vmap")
    assert flat.workers_per_call(tuple(x.shape)) == 7  # plenty of memory here
    monkeypatch.setattr(flatmodel, "memory_budget", lambda device: 3 * per_worker)
    short = FlatModel(module, method="vmap")
    assert short.workers_per_call(tuple(x.shape)) == 3
    theta = flat.initial()
    torch.testing.assert_close(short.worker_gradients(theta, x, y),
                               flat.worker_gradients(theta, x, y), rtol=1e-5, atol=1e-6)


def test_vmap_bytes_grows_with_workers_and_batch_and_counts_the_gradients():
    module = small_cnn()
    d = sum(p.numel() for p in module.parameters())
    one, two = (vmap_bytes(module, (3, 6, 6), 8, n) for n in (1, 2))
    assert vmap_bytes(module, (3, 6, 6), 8, 10) - one == 9 * (two - one)  # linear in n
    per_example = (vmap_bytes(module, (3, 6, 6), 16, 1) - one) // 8
    assert per_example >= 4 * 4 * 6 * 6  # at least the conv's output is saved per example
    assert one >= 8 * per_example + 2 * 4 * d
    with pytest.raises(ValueError, match="vmap_bytes needs n >= 1 and batch >= 1, got n=0"):
        vmap_bytes(module, (3, 6, 6), 8, 0)


def test_the_estimate_leaves_the_module_and_the_random_stream_alone():
    module = small_cnn(dropout=0.5)
    module.eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    assert saved_bytes(module, (3, 6, 6), 4) > 0
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not module.training
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
