"""The fast paths of the pre-aggregators: the row-mixing kernels (bucketing's and NNM's
four-terms-at-a-time one) against the torch implementation and a float64 loop, NNM's compiled
mixing against its torch GEMM, the huge-page output buffers, and the clipping rules writing
into them with the same floats as ``x * factor``."""

from __future__ import annotations

import pytest
import torch
from hostile_inputs import F32MAX, HOSTILE, gen, honest_and_hostile

from byzsgd import kernels
from byzsgd.aggregators import _mix
from byzsgd.aggregators._norms import row_norms, scaled_rows
from byzsgd.aggregators.preaggregation import arc, clipping, nnm
from byzsgd.kernels import memory, torch_impl

GROUPS = [[0], [1, 2], [3, 4, 5, 6], [0, 2, 4, 6, 8], [1, 3, 5, 7, 9, 10, 11, 12],
          list(range(13)), [12, 11, 10, 9, 8, 7, 6, 5, 4]]


def ref_mix(x, groups):
    x = x.double()
    return torch.stack([sum(x[r] for r in g) / len(g) for g in groups])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mix_rows_many_terms_matches_torch_and_loop(dtype):
    x = torch.randn(13, 3001, generator=gen(1), dtype=dtype)  # not a multiple of the chunk
    compiled = _mix.mix_rows(x, GROUPS)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(compiled, torch_impl.mix_rows(x, GROUPS), rtol=tol, atol=tol)
    torch.testing.assert_close(compiled.double(), ref_mix(x, GROUPS), rtol=tol, atol=tol)


@pytest.mark.parametrize("value", HOSTILE)
def test_mix_rows_confines_a_hostile_row(value):
    x = torch.randn(13, 2000, generator=gen(2))
    x[7] = value
    out = _mix.mix_rows(x, GROUPS)
    for i, g in enumerate(GROUPS):
        if 7 in g:
            continue
        assert torch.isfinite(out[i]).all(), i
    big = torch.randn(9, 100, generator=gen(5))
    big[0] = big[3] = F32MAX  # each term scaled before it is added: the means stay finite
    assert torch.isfinite(_mix.mix_rows(big, [list(range(6)), list(range(9))])).all()


@pytest.mark.parametrize("value", [None, *HOSTILE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nnm_compiled_mixing_matches_torch_gemm(value, dtype):
    x = (torch.randn(11, 4000, generator=gen(3)) if value is None
         else honest_and_hostile(value, d=4000)).to(dtype)
    with kernels.use("torch"):
        want = nnm(x, 3)
    got = nnm(x, 3)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True)


def test_memory_empty_is_a_plain_owned_tensor():
    t = memory.empty((3, 5), torch.float32)
    assert t.shape == (3, 5) and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(2.0)
    assert float(t.sum()) == 30.0
    assert memory.empty((2,), torch.int64).dtype == torch.int64  # torch.empty otherwise


def test_clipping_writes_the_floats_of_x_times_factor():
    x = torch.randn(9, 5000, generator=gen(4)) * 3
    x[4] = F32MAX
    norms = row_norms(x)
    factors = torch.where(norms > 50.0, 50.0 / norms, torch.ones_like(norms))
    out = scaled_rows(x, factors)
    normal = factors >= 1e-30
    assert torch.equal(out[normal], x[normal] * factors[normal].float()[:, None])
    assert torch.equal(clipping(x, c=50.0)[normal], out[normal])
    assert torch.isfinite(arc(x, 2)).all()
