"""Tests of the centered Gram kernel (``byzsgd.aggregators._gram``)."""

from __future__ import annotations

import pytest
import torch

from byzsgd.aggregators import _gram
from byzsgd.aggregators._gram import centered_gram, warmup


def _reference(x: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """Float64 Gram matrix of x - center (numpy: for such small products torch's thread-pool
    wake-ups can cost more than the product itself)."""
    xc = x.double() if center is None else x.double() - center.double()
    a = xc.numpy()
    return torch.from_numpy(a @ a.T)


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warmup()


# n covers pure 4-blocks, 3-blocks, mixes and the padded sizes 1, 2, 5; d covers a single
# short chunk, exact multiples of the 1024/512-element chunks and remainders.
SHAPES = [
    (1, 1), (1, 1000), (2, 3), (2, 1024), (3, 7), (4, 1025), (5, 1), (5, 2049), (6, 513),
    (7, 4096), (8, 33), (9, 3001), (10, 1023), (11, 5000), (12, 2048), (13, 777), (16, 1536),
    (17, 4097), (25, 3333), (31, 1024), (33, 6000), (50, 2500), (51, 4099), (60, 1031),
]


@pytest.mark.parametrize(
    ("dtype", "centered", "parallel"),
    [(torch.float32, False, False), (torch.float32, True, False), (torch.float64, False, False),
     (torch.float64, True, False), (torch.float32, True, True), (torch.float64, True, True)],
)
@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_matches_float64_reference(n: int, d: int, centered: bool, dtype: torch.dtype,
                                   parallel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if parallel:  # small inputs normally run on one thread: force the multi-threaded path
        monkeypatch.setattr(_gram, "_SERIAL_WORK", 0)
    gen = torch.Generator().manual_seed(1000 * n + d)
    x = torch.randn(n, d, generator=gen, dtype=dtype) * 3 + 0.5
    center = torch.randn(d, generator=gen, dtype=dtype) if centered else None
    x_before = x.clone()
    g = centered_gram(x, center)
    ref = _reference(x, center)
    assert g.shape == (n, n)
    assert g.dtype == torch.float64
    assert torch.equal(x, x_before)  # input untouched
    assert torch.equal(g, g.T)  # exactly symmetric
    # Error relative to the largest squared norm (the scale of every entry's rounding).
    scale = ref.diagonal().max()
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert ((g - ref).abs().max() / scale).item() < tol


def test_moderate_size_and_error_does_not_grow_with_d() -> None:
    gen = torch.Generator().manual_seed(7)
    n, d = 51, 70_001
    x = torch.randn(n, d, generator=gen)
    center = x.mean(0)
    g = centered_gram(x, center)
    ref = _reference(x, center)
    rel = ((g - ref).abs().max() / ref.diagonal().max()).item()
    # Chunk partial sums are float32 over ~1e3 terms, totals float64: error ~ 1e-7, not
    # sqrt(d) * eps or d * eps.
    assert rel < 1e-6
    # Groups of chunks go to whichever thread is free, but the sum order is fixed.
    assert torch.equal(centered_gram(x, center), g)


def test_non_contiguous_and_center_dtype_are_accepted() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3000, 9, generator=gen).T  # (9, 3000), not contiguous
    center = torch.randn(3000, generator=gen, dtype=torch.float64)  # cast to float32
    g = centered_gram(x, center)
    ref = _reference(x, center.float())
    assert ((g - ref).abs().max() / ref.diagonal().max()).item() < 1e-6


def test_empty_and_invalid_inputs() -> None:
    assert centered_gram(torch.zeros(4, 0)).equal(torch.zeros(4, 4, dtype=torch.float64))
    assert centered_gram(torch.zeros(0, 5)).shape == (0, 0)
    with pytest.raises(TypeError):
        centered_gram(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError):
        centered_gram(torch.zeros(3))
    with pytest.raises(ValueError):
        centered_gram(torch.zeros(3, 4), torch.zeros(5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 1e30])
def test_non_finite_row_only_contaminates_its_row_and_column(bad: float,
                                                             dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    n, d = 13, 5000
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    center = torch.randn(d, generator=gen, dtype=dtype) * 0.1
    for row in (0, 5, 12):  # in a 4-block, mid-matrix, and in the trailing 3-block
        xb = x.clone()
        xb[row, ::7] = bad
        g = centered_gram(xb, center)
        others = [i for i in range(n) if i != row]
        clean = g[others][:, others]
        ref = _reference(x, center)[others][:, others]
        assert torch.isfinite(clean).all()
        assert ((clean - ref).abs().max() / ref.diagonal().max()).item() < 1e-6
        if dtype == torch.float32 or bad != 1e30:  # 1e30 squared overflows float32 only
            assert not torch.isfinite(g[row, row])


def test_centering_removes_float32_cancellation() -> None:
    """Rows sharing a large offset: distances from the centered Gram stay accurate.

    x_i = 1e3 + 1e-3 * noise_i. The squared distances are ~ d * 2e-6 while the squared norms
    are ~ d * 1e6: from ``x @ x.T`` in float32 the difference is rounding noise. Centering at
    one of the rows removes the common offset first.
    """
    gen = torch.Generator().manual_seed(5)
    n, d = 12, 20_000
    base = torch.full((d,), 1e3, dtype=torch.float64)
    x64 = base + 1e-3 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = x64.float()
    xd = x.double()  # the float32 values, exactly, for the reference distances
    true = torch.cdist(xd, xd) ** 2

    def dists(g: torch.Tensor) -> torch.Tensor:
        diag = g.diagonal()
        return diag[:, None] + diag[None, :] - 2 * g

    off = ~torch.eye(n, dtype=torch.bool)
    centered = dists(centered_gram(x, x[0]))
    rel_centered = ((centered - true).abs()[off] / true[off]).max().item()
    assert rel_centered < 1e-4

    plain = x @ x.T  # float32 Gram: the squared norms ~2e10 leave no correct digit
    rel_plain = ((dists(plain.double()) - true).abs()[off] / true[off]).max().item()
    assert rel_plain > 1e-1



def _gram_in_child(x: torch.Tensor, queue) -> None:  # runs in a forked child
    # Only centered_gram here: torch's own OpenMP pool is not usable in a forked child.
    queue.put(centered_gram(x, x[0]).numpy())


def test_usable_after_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread pool is per process: a forked child makes its own instead of hanging."""
    import multiprocessing

    monkeypatch.setattr(_gram, "_SERIAL_WORK", 0)
    x = torch.arange(51 * 3000, dtype=torch.float32).reshape(51, 3000) % 7
    expected = centered_gram(x, x[0])  # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_gram_in_child, args=(x, queue))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert torch.equal(torch.from_numpy(got), expected)


@pytest.mark.parametrize("n, d", [(1, 5), (2, 1), (7, 3000), (13, 2049)])
def test_linf_distances_equal_cdist(n, d):
    from byzsgd.aggregators._linf import linf_distances

    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d), dtype=torch.float64)
    torch.testing.assert_close(linf_distances(x), torch.cdist(x, x, p=float("inf")),
                               rtol=0, atol=0)
    torch.testing.assert_close(linf_distances(x.float()), torch.cdist(x, x, p=float("inf")),
                               rtol=1e-6, atol=1e-6)


# --- repeated rows: the Gram matrix of the distinct rows only --------------------------------

def _with_copies(n_honest=20, copies=6, d=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    honest = 1.0 + 0.01 * torch.randn(n_honest, d, generator=g)
    forged = honest.mean(0) + 1.5 * honest.std(0)
    return torch.cat([honest, forged.expand(copies, d)]).contiguous()


def test_repeated_last_rows_are_found_and_verified():
    from byzsgd.aggregators.distances import coordinate_sample, geometry, repeated_rows
    x = _with_copies()
    source = repeated_rows(x, coordinate_sample(x))
    assert source is not None
    assert source.tolist() == [*range(21), *[20] * 5]
    dedup = geometry(x)
    sq = (x[:, None, :].double() - x[None, :, :].double()).square().sum(-1)
    torch.testing.assert_close(dedup.sqdist, sq, rtol=1e-5, atol=1e-9)


def test_rows_equal_on_the_sample_but_not_everywhere_are_not_copies():
    """An adversary can make a row equal to another on the pivot's sampled coordinates and
    different on one other coordinate: it is verified and computed as a distinct row."""
    from byzsgd.aggregators.distances import coordinate_sample, geometry, repeated_rows
    x = _with_copies()
    x[-1, 1] += 1.0  # the sample takes every (3000 // 512)-th coordinate: 0, 5, 10...
    assert repeated_rows(x, coordinate_sample(x)) is None
    x[-1, 1] -= 1.0
    x[-3, 7] = float("nan")  # a copy with a NaN: not a copy (NaN equals nothing)
    assert repeated_rows(x, coordinate_sample(x)) is None
    geo = geometry(x)
    assert not bool(geo.valid[-3]) and bool(geo.valid[-1])
    assert geo.sqdist[-1, -2] == 0.0


def test_rules_are_unchanged_by_the_repeated_row_shortcut(monkeypatch):
    from byzsgd import aggregators as A
    from byzsgd.aggregators import distances
    x = _with_copies(n_honest=30, copies=9)
    fast = {name: A.aggregate(name, x, 9) for name in ("krum", "multi-krum", "medoid",
                                                         "geomed", "bulyan")}
    monkeypatch.setattr(distances, "repeated_rows", lambda x, sample: None)
    for name, result in fast.items():
        slow = A.aggregate(name, x, 9)
        torch.testing.assert_close(result.value, slow.value, rtol=1e-5, atol=1e-6)
        if result.selected is not None:  # the same rows, up to which of the copies
            assert [i if i < 30 else "copy" for i in result.selected.tolist()] == \
                [i if i < 30 else "copy" for i in slow.selected.tolist()]


# --- compiled row helpers (aggregators/_rows.py) -----------------------------------------------

def _spread_reference(sample):
    ok = torch.isfinite(sample).all(dim=1)
    clean = torch.where(ok[:, None], sample, torch.zeros(()))
    dist = (clean[:, None, :] - clean[None, :, :]).square().sum(-1)
    dist[~ok] = float("inf")
    dist[:, ~ok] = float("inf")
    return dist.median(dim=1).values


@pytest.mark.parametrize("n", [1, 2, 7, 51])
def test_sample_spread_is_the_median_squared_distance(n):
    from byzsgd.aggregators._rows import sample_spread
    g = torch.Generator().manual_seed(n)
    sample = torch.randn(n, 64, generator=g, dtype=torch.float64)
    if n > 2:
        sample[1, 5] = float("nan")
        sample[2, 0] = float("-inf")
    torch.testing.assert_close(sample_spread(sample), _spread_reference(sample))


def test_row_finite_and_suffix_sources():
    from byzsgd.aggregators._rows import row_finite, rows_equal, suffix_sources
    for dtype in (torch.float32, torch.float64, torch.float16):
        row = torch.ones(1000, dtype=dtype)
        assert row_finite(row)
        for bad in (float("nan"), float("inf"), float("-inf")):
            row[999] = bad
            assert not row_finite(row)
            row[999] = 1.0
        row[3] = torch.finfo(dtype).max
        assert row_finite(row)
    x = torch.tensor([[1.0, 2], [3, 4], [1, 2], [5, 6], [3, 4], [3, 4]])
    assert suffix_sources(x).tolist() == [0, 1, 2, 3, 1, 1]  # row 3 repeats nothing: stop
    assert suffix_sources(x[:3]).tolist() == [0, 1, 0]
    assert rows_equal(x, 4, 6, 1) and not rows_equal(x, 3, 6, 1)
    x[5, 1] = float("nan")
    assert suffix_sources(x).tolist() == [0, 1, 2, 3, 4, 5]
