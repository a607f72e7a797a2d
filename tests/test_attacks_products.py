"""The compiled float64 column sums and centred products of the adaptive attacks, against
torch in float64, across block boundaries, dtypes, layouts and thread counts."""

from __future__ import annotations

import pytest
import torch

from byzsgd.attacks._products import _BLOCK, centered_products, column_sums, combination


@pytest.mark.parametrize("m,d", [(1, 1), (3, 7), (5, _BLOCK), (4, _BLOCK + 1),
                                 (9, 3 * _BLOCK + 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_to_torch_in_float64(m, d, dtype):
    g = torch.Generator().manual_seed(m * d)
    x = (torch.randn((m, d), generator=g, dtype=torch.float64) + 3.0).to(dtype)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    v = torch.randn((3, d), generator=g, dtype=torch.float64)
    w = torch.randn(m, generator=g, dtype=torch.float64)
    u = x.double() - c
    torch.testing.assert_close(column_sums(x), x.double().sum(dim=0))
    torch.testing.assert_close(centered_products(x, c, v), u @ v.T)
    torch.testing.assert_close(combination(x, c, w), w @ u)


def test_layout_and_threads_do_not_change_the_floats():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn((6, 2 * (3 * _BLOCK + 5)), generator=g)
    x = wide[:, ::2]  # not contiguous
    c = torch.randn(x.shape[1], generator=g, dtype=torch.float64)
    v = torch.randn((2, x.shape[1]), generator=g, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (column_sums(x), centered_products(x, c, v))
        torch.set_num_threads(max(2, threads))
        many = (column_sums(x.contiguous()), centered_products(x.contiguous(), c, v))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
