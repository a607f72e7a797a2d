"""The hand-written dense-MLP backward equals autograd (vmap) and is chosen only where valid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from byzsgd import models
from byzsgd._memory import keep_freed_memory
from byzsgd.engine.flatmodel import FlatModel
from byzsgd.engine.mlpgrad import DenseMLPGradients, dense_relu_widths


def _batch(n: int, b: int, shape: tuple[int, ...], classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, b, *shape, generator=g)
    x[x < 0.6] = 0.0  # MNIST-like: mostly zero pixels
    return x, torch.randint(0, classes, (n, b), generator=g), g


@pytest.mark.parametrize("name", ["mlp", "mlp-2x128", "logreg"])
@pytest.mark.parametrize("shared", [True, False])
def test_mlp_gradients_equal_vmap(name, shared):
    x, y, g = _batch(5, 7, (1, 28, 28), 10)
    module = models.build(name, (1, 28, 28), 10, generator=g)
    fast, ref = FlatModel(module, method="mlp"), FlatModel(module, method="vmap")
    theta = fast.initial() + 0.05 * torch.randn(fast.d, generator=g)
    if shared:
        got, want = fast.worker_gradients(theta, x, y), ref.worker_gradients(theta, x, y)
    else:
        thetas = theta + 0.05 * torch.randn(5, fast.d, generator=g)
        got, want = fast.local_gradients(thetas, x, y), ref.local_gradients(thetas, x, y)
    assert got.shape == (5, fast.d) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["mlp", "vmap"])
def test_gradients_written_into_rows_of_a_larger_matrix(method):
    """``out=``: the simulator has the honest gradients written straight into the first rows
    of the received matrix; the rows around them are left alone."""
    x, y, g = _batch(4, 6, (1, 28, 28), 10)
    flat = FlatModel(models.build("mlp", (1, 28, 28), 10, generator=g), method=method)
    theta = flat.initial()
    sent = torch.full((6, flat.d), 7.0)
    got = flat.worker_gradients(theta, x, y, out=sent[1:5])
    assert got.data_ptr() == sent[1].data_ptr()
    torch.testing.assert_close(sent[1:5], flat.worker_gradients(theta, x, y))
    assert bool((sent[0] == 7.0).all()) and bool((sent[5] == 7.0).all())
    with pytest.raises(ValueError, match="out must be"):
        DenseMLPGradients([784, 100, 10])(theta, x, y, out=torch.empty(4, flat.d + 1))


def test_deep_mlp_without_flatten_and_single_sample():
    module = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                           nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    assert dense_relu_widths(module) == [6, 5, 4, 4, 3]
    kernel = DenseMLPGradients([6, 5, 4, 4, 3])
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(kernel.d, generator=g)
    x, y = torch.randn(2, 1, 6, generator=g), torch.tensor([[2], [0]])
    want = torch.stack([
        torch.func.grad(lambda th, i=i: nn.functional.cross_entropy(
            torch.func.functional_call(module, _params(module, th), (x[i],)), y[i]))(theta)
        for i in range(2)])
    torch.testing.assert_close(kernel(theta, x, y), want, rtol=1e-5, atol=1e-6)


def _params(module: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    out, o = {}, 0
    for name, p in module.named_parameters():
        out[name] = theta[o:o + p.numel()].view(p.shape)
        o += p.numel()
    return out


@pytest.mark.parametrize("name", ["cnn-cifar", "cnn-generalized", "cnn-fall"])
def test_other_models_are_not_taken_for_dense_mlps(name):
    shape = (3, 32, 32) if name == "cnn-cifar" else (1, 28, 28)
    module = models.build(name, shape, 10, generator=torch.Generator().manual_seed(0))
    assert dense_relu_widths(module) is None
    assert FlatModel(module).method in ("vmap", "loop")
    with pytest.raises(ValueError, match="dense ReLU MLP"):
        FlatModel(module, method="mlp")


def test_models_with_dropout_or_other_activations_are_not_dense_relu():
    assert dense_relu_widths(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))) is None
    assert dense_relu_widths(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Dropout(),
                                           nn.Linear(3, 2))) is None
    assert dense_relu_widths(nn.Sequential(nn.Linear(4, 3, bias=False))) is None
    assert FlatModel(models.build("mlp", (1, 28, 28), 10,
                                  generator=torch.Generator())).method == "mlp"


def test_mismatched_inputs_fail_with_the_shapes():
    kernel = DenseMLPGradients([4, 3, 2])
    with pytest.raises(ValueError, match="input features"):
        kernel(torch.zeros(kernel.d), torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="theta must be"):
        kernel(torch.zeros(kernel.d + 1), torch.zeros(2, 3, 4),
               torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="method must be one of"):
        FlatModel(nn.Sequential(nn.Linear(4, 2)), method="fast")


def test_a_diverged_model_gives_nan_gradients_not_an_error():
    kernel = DenseMLPGradients([4, 3, 2])
    theta = torch.full((kernel.d,), float("nan"))
    out = kernel(theta, torch.ones(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    assert out.shape == (2, kernel.d) and torch.isnan(out).any()


def test_keep_freed_memory_is_idempotent():
    assert keep_freed_memory() is keep_freed_memory()


# --- the first layer from sparse rows ---------------------------------------------------------

def test_sparse_rows_linear_equals_the_dense_product():
    from byzsgd.engine.sparse import SparseRows
    x, _, g = _batch(1, 300, (1, 28, 28), 10)
    images = x[0]
    images[3] = 0.0  # an all-zero image (bias only)
    sparse = SparseRows.from_dense(images, max_density=1.0)
    assert sparse is not None and sparse.shape == (300, 784)
    assert sparse.density == pytest.approx(float((images != 0).float().mean()))
    weight, bias = torch.randn(37, 784, generator=g), torch.randn(37, generator=g)
    rows = torch.tensor([5, 3, 5, 299, 0, 17, 3])  # repeats and any order
    got = sparse.linear(rows, weight, bias)
    want = torch.addmm(bias, images.view(300, -1)[rows], weight.T)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], bias)
    dense = torch.full((7, 1, 28, 28), float("nan"))
    torch.testing.assert_close(sparse.linear(rows, weight, bias, dense=dense), got)
    assert torch.equal(dense, images[rows])  # the dense rows written from the same reads
    with pytest.raises(ValueError, match="dense must be"):
        sparse.linear(rows, weight, bias, dense=torch.empty(6, 784))
    assert sparse.linear(torch.empty(0, dtype=torch.long), weight, bias).shape == (0, 37)
    with pytest.raises(IndexError, match=r"\[0, 300\)"):
        sparse.linear(torch.tensor([300]), weight, bias)
    with pytest.raises(ValueError, match="do not fit"):
        sparse.linear(rows, weight[:, :10], bias)


def test_dense_inputs_stay_dense():
    from byzsgd.engine.sparse import SparseRows
    assert SparseRows.from_dense(torch.rand(20, 1, 4, 4) + 0.1) is None  # no zeros
    assert SparseRows.from_dense(torch.zeros(20, 8, dtype=torch.float64)) is None  # not fp32
    assert SparseRows.from_dense(torch.zeros(20, 8)) is not None


def test_mlp_gradients_with_the_sparse_first_layer_equal_the_dense_ones():
    """What the simulator does for MNIST: the first layer's product from the non-zero pixels
    of the training images, the rest as before."""
    import functools

    from byzsgd.engine.sparse import SparseRows
    x, _, g = _batch(1, 400, (1, 28, 28), 10)
    images = x[0]
    sparse = SparseRows.from_dense(images, max_density=1.0)
    assert sparse is not None
    module = models.build("mlp-2x128", (1, 28, 28), 10, generator=g)
    flat = FlatModel(module, method="mlp")
    theta = flat.initial()
    samples = torch.randint(0, 400, (6, 9), generator=g)
    labels = torch.randint(0, 10, (6, 9), generator=g)
    dense = flat.worker_gradients(theta, images[samples], labels)
    product = functools.partial(sparse.linear, samples)
    torch.testing.assert_close(flat.worker_gradients(theta, images[samples], labels, None,
                                                     product), dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blas", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_products_written_into_matrix_rows(monkeypatch, blas, dtype):
    """a_w^T b_w lands in row w of a wider matrix (row stride > m * p), through MKL's batched
    GEMM where torch carries it, else through torch.bmm and a copy; columns outside the
    block are left alone."""
    from byzsgd.engine import _blas
    if not blas:
        monkeypatch.setattr(_blas, "_sgemm_batch", lambda: None)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 7, 3, generator=g, dtype=dtype)
    b = torch.randn(5, 7, 4, generator=g, dtype=dtype)
    wide = torch.full((5, 20), -1.0, dtype=dtype)
    _blas.batched_at_b(a, b, wide[:, 2:14])
    want = torch.bmm(a.transpose(1, 2), b).view(5, -1)
    torch.testing.assert_close(wide[:, 2:14], want)
    assert bool((wide[:, :2] == -1).all()) and bool((wide[:, 14:] == -1).all())
    with pytest.raises(ValueError, match="do not match"):
        _blas.batched_at_b(a, b, wide[:, 2:13])
