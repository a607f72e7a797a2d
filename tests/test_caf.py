"""CAF (Allouah, Guerraoui, Stephan, ICML 2025): worked examples, a float64 reference that
builds the d x d covariance, hostile rows, permutation invariance with ties, both kernel
implementations, parameter checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hostile_inputs import HOSTILE, gen, honest_and_hostile

from byzsgd import aggregators as A


def ref_caf(x, f, start=None):
    """The filter as written in the paper / ByzFL's docstring, in float64 with the explicit
    d x d covariance and numpy's eigh; ``start`` the initial weights (1 by default)."""
    x = x.double().numpy()
    n = x.shape[0]
    c = np.ones(n) if start is None else np.asarray(start, dtype=np.float64)
    rows = c > 0
    x = np.where(rows[:, None], x, 0.0)  # rows of weight 0 are never read
    best, best_lam, first = None, np.inf, True
    while c.sum() > 0 and (first or c.sum() > n - 2 * f):
        first = False
        mu = (c[:, None] * x).sum(axis=0) / c.sum()
        y = x - mu
        sigma = sum(c[i] * np.outer(y[i], y[i]) for i in range(n)) / c.sum()
        lam, vecs = np.linalg.eigh(sigma)
        if lam[-1] < best_lam:
            best, best_lam = mu, lam[-1]
        if not lam[-1] > 1e-12 * max(1.0, abs(sigma).max()):
            break
        tau = (y @ vecs[:, -1]) ** 2
        tau_max = tau[c > 0].max()
        c = np.where((c > 0) & (tau >= tau_max), 0.0, np.clip(c * (1 - tau / tau_max), 0, None))
    return torch.from_numpy(best)


def test_worked_example_byzfl_docstring():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    torch.testing.assert_close(A.caf(x, 1), torch.tensor([4.0, 5.0, 6.0]))


def test_worked_example_by_hand():
    # 1-d, f = 1, n = 4: first mean 3.25, variance 15.6875; tau = (x - 3.25)^2, the row 10
    # has the largest and goes to weight 0; weights (1 - tau/45.5625) leave a sum of 2.6228 > 2,
    # so a second iteration runs with the weighted mean of 0, 1, 2 (variance 0.6 < 15.7)
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    tau = (x[:, 0] - 3.25) ** 2
    c = 1 - tau / 45.5625
    c[3] = 0
    expected = float((c * x[:, 0]).sum() / c.sum())
    mu2 = torch.tensor([expected], dtype=torch.float64)
    var2 = float((c * (x[:, 0] - expected) ** 2).sum() / c.sum())
    assert var2 < 15.6875
    # a third iteration would need sum c > 2: the second removes the row farthest from mu2
    tau2 = (x[:3, 0] - expected) ** 2
    c2 = c[:3] * (1 - tau2 / tau2.max())
    assert float(c2.sum()) <= 2
    torch.testing.assert_close(A.caf(x, 1), mu2)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(seed, dtype):
    g = gen(seed)
    n, f, d = (7, 11, 15)[seed % 3], (1, 3, 4)[seed % 3], (5, 12, 30)[seed % 3]
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 2
    x[:f] += 4 * torch.randn(d, generator=g, dtype=torch.float64)
    x = x.to(dtype)
    torch.testing.assert_close(A.caf(x, f).double(), ref_caf(x, f),
                               rtol=1e-4 if dtype == torch.float32 else 1e-9,
                               atol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_rows_start_removed(value):
    x = honest_and_hostile(value)  # float32: every hostile value is invalid there
    n, f = x.shape[0], 3
    out = A.caf(x, f)
    assert torch.isfinite(out).all()
    start = [1.0] * (n - f) + [0.0] * f
    clean = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    torch.testing.assert_close(out.double(), ref_caf(clean, f, start), rtol=1e-4, atol=1e-4)


def test_huge_rows_in_float64_are_filtered_out():
    x = honest_and_hostile(1e20).double()
    out = A.caf(x, 3)
    honest = x[:8]
    assert float((out - honest.mean(0)).norm()) < float(torch.cdist(honest, honest).max())


def test_permutation_invariant_with_copies():
    g = gen(3)
    x = torch.randn(11, 9, generator=g, dtype=torch.float64)
    x[8:] = x[0] + 5
    x[1] = x[2]
    out = A.caf(x, 3)
    for _ in range(5):
        perm = torch.randperm(11, generator=g)
        torch.testing.assert_close(A.caf(x[perm], 3), out, rtol=1e-9, atol=1e-9)


def test_identical_rows_return_them():
    x = torch.ones(5, 4)
    torch.testing.assert_close(A.caf(x, 2), torch.ones(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_and_compiled_agree(dtype):
    x = torch.randn(13, 3000, generator=gen(4), dtype=dtype)
    x[10:] = 7.0
    a = A.aggregate("caf", x, 3, impl="torch").value
    b = A.aggregate("caf", x, 3, impl="compiled").value
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_preconditions():
    with pytest.raises(ValueError, match="caf needs f < n/2, got n=6, f=3"):
        A.caf(torch.zeros(6, 2), 3)
    with pytest.raises(ValueError):
        A.caf(torch.zeros(6, 2), -1)
    A.check("caf", 7, 3)
