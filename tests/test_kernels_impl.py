"""impl="torch" equals impl="compiled", rule by rule and kernel by kernel (issue 13).

The torch kernels are what the rules run on a GPU; on the CPU they are exercised here against
the compiled (numba) kernels on random inputs, inputs with ties and hostile inputs (NaN, Inf and
1e30 rows), float32 and float64. Selections and order statistics must match exactly; sums and
Gram matrices to float tolerance.
"""

from __future__ import annotations

import pytest
import torch

from byzsgd import aggregators, kernels
from byzsgd.aggregators import _gram, _linf, _mix, _orderstats, _rows
from byzsgd.aggregators import _registry as registry
from byzsgd.attacks import _moments
from byzsgd.kernels import torch_impl

N, F, D = 11, 2, 700
DTYPES = [torch.float32, torch.float64]


def _inputs(kind: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (3.0 + torch.randn(N, D, generator=g, dtype=torch.float64)).to(dtype)
    if kind == "ties":
        x = torch.randint(-2, 3, (N, D), generator=g).to(dtype)
        x[N - 3:] = x[0]  # repeated rows, as an attack sends
    elif kind == "hostile":
        x[N - 1, 5] = float("nan")
        x[N - 2, :] = float("inf")
        x[N - 2, 7] = -float("inf")
        x[0, 3] = 1e30
    elif kind == "offset":  # float32 cancellation without centering
        x = (1e3 + 1e-3 * torch.randn(N, D, generator=g, dtype=torch.float64)).to(dtype)
    return x


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    assert a.dtype == b.dtype and a.device == b.device and a.shape == b.shape
    tol = 2e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


def _rules() -> list[str]:
    return registry.names()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "ties", "hostile", "offset"])
@pytest.mark.parametrize("rule", _rules())
def test_every_rule_torch_equals_compiled(rule: str, kind: str, dtype: torch.dtype) -> None:
    x = _inputs(kind, dtype)
    compiled = aggregators.aggregate(rule, x, F, impl="compiled")
    torch_ = aggregators.aggregate(rule, x, F, impl="torch")
    _close(torch_.value, compiled.value, dtype)
    if compiled.selected is None:
        assert torch_.selected is None
    else:
        assert torch.equal(torch_.selected, compiled.selected)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "meamed", "krum", "medoid",
                                  "bulyan"])
@pytest.mark.parametrize("kind", ["random", "ties", "hostile"])
def test_selections_and_order_statistics_match_exactly(rule: str, kind: str) -> None:
    x = _inputs(kind, torch.float32, seed=1)
    a = aggregators.aggregate(rule, x, F, impl="compiled").value
    b = aggregators.aggregate(rule, x, F, impl="torch").value
    assert torch.equal(a.isnan(), b.isnan())
    assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_auto_is_compiled_on_cpu_and_the_switch_is_declared() -> None:
    x = torch.randn(5, 3)
    with kernels.use("auto"):
        assert not kernels.use_torch(x) and kernels.use_torch(x.half())
    with kernels.use("torch"):
        assert kernels.use_torch(x)
    with kernels.use("compiled"), pytest.raises(ValueError, match=r"impl='compiled' needs a "
                                                 r"CPU float32/float64 tensor, got "
                                                 r"torch.float16 on cpu"):
        kernels.use_torch(x.half(), "k")
    assert kernels.current() == "auto"
    with pytest.raises(ValueError, match=r"median: .*impl.*'auto', 'torch', 'compiled'"):
        aggregators.aggregate("median", x, 1, impl="cuda")
    bound = registry.bind("krum", 1, impl="torch")
    assert torch.equal(bound(x), aggregators.get("krum")(x, 1))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_half_precision_is_promoted_to_float32(half: torch.dtype, impl: str) -> None:
    x = _inputs("random", torch.float32).to(half)
    for rule in ("median", "krum", "mean"):
        out = aggregators.get(rule)(x, F, impl=impl)
        assert out.dtype == torch.float32
        assert torch.equal(out, aggregators.get(rule)(x.float(), F, impl="compiled"))


# --- kernel by kernel -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "ties", "hostile", "offset"])
def test_centered_gram(kind: str, dtype: torch.dtype) -> None:
    x = _inputs(kind, dtype)
    for center in (None, x[1], x.median(dim=0).values):
        a = _gram.centered_gram(x, center)
        b = torch_impl.centered_gram(x, center)
        assert torch.equal(b.nan_to_num(), b.T.nan_to_num()) and torch.equal(b.isnan(), b.T.isnan())
        assert torch.equal(a.isfinite(), b.isfinite())
        _close(b, a, dtype)


def test_centered_gram_confines_hostile_rows_and_avoids_cancellation() -> None:
    x = _inputs("offset", torch.float32)
    x[3] = float("nan")
    x[4, 0] = 1e30
    g = torch_impl.centered_gram(x, x[0])
    bad = torch.zeros(N, dtype=torch.bool)
    bad[[3, 4]] = True
    assert bool(g[~bad][:, ~bad].isfinite().all())
    assert not bool(g[3].isfinite().any()) and not bool(g[4, 4].isfinite())
    exact = torch_impl.centered_gram(x.double(), x[0].double())
    ok = ~bad
    sq = g.diagonal()[ok][:, None] + g.diagonal()[ok][None] - 2 * g[ok][:, ok]
    sq_exact = (exact.diagonal()[ok][:, None] + exact.diagonal()[ok][None]
                - 2 * exact[ok][:, ok])
    torch.testing.assert_close(sq, sq_exact, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "ties", "hostile"])
def test_order_statistics_are_exact(kind: str, dtype: torch.dtype) -> None:
    x = _inputs(kind, dtype)
    for rows in (None, torch.tensor([0, 2, 3, 5, 8, 9, 10])):
        m = N if rows is None else rows.numel()
        pairs = [(_orderstats.coordinate_median(x, rows), torch_impl.coordinate_median(x, rows))]
        for b in (0, 1, (m - 1) // 2):
            pairs.append((_orderstats.coordinate_trimmed_mean(x, b, rows),
                          torch_impl.coordinate_trimmed_mean(x, b, rows)))
        for keep in (1, m // 2, m - 2, m):
            pairs.append((_orderstats.coordinate_mean_around_median(x, keep, rows),
                          torch_impl.coordinate_mean_around_median(x, keep, rows)))
        for a, b_ in pairs:
            assert a.dtype == b_.dtype
            assert torch.equal(a.isnan(), b_.isnan())
            assert torch.equal(a.nan_to_num(), b_.nan_to_num())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_linf_distances_are_exact(kind: str, dtype: torch.dtype) -> None:
    x = _inputs(kind, dtype)
    assert torch.equal(_linf.linf_distances(x), torch_impl.linf_distances(x))


@pytest.mark.parametrize("kind", ["random", "ties", "hostile"])
def test_row_helpers(kind: str) -> None:
    x = _inputs(kind, torch.float32)
    sample = x[:, ::7].double()
    _close(torch_impl.sample_spread(sample), _rows.sample_spread(sample), torch.float64)
    assert torch.equal(torch_impl.suffix_sources(sample), _rows.suffix_sources(sample))
    for i in range(N):
        assert torch_impl.row_finite(x[i]) == _rows.row_finite(x[i])
    for lo, hi, src in [(N - 3, N, 0), (1, 3, 0), (N - 2, N, N - 3)]:
        assert torch_impl.rows_equal(x, lo, hi, src) == _rows.rows_equal(x, lo, hi, src)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["random", "hostile"])
def test_mix_rows_and_moments(kind: str, dtype: torch.dtype) -> None:
    x = _inputs(kind, dtype)
    groups = [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9, 10]]
    _close(torch_impl.mix_rows(x, groups), _mix.mix_rows(x, groups), dtype)
    for rows in (x, x[:1]):
        for a, b in zip(torch_impl.mean_std(rows), _moments.mean_std(rows), strict=True):
            _close(a, b, dtype)


def test_the_dispatch_reaches_the_kernels() -> None:
    """impl="torch" really runs the torch kernels (a broken torch kernel fails a rule)."""
    x = _inputs("random", torch.float32)
    calls: list[str] = []
    original = torch_impl.coordinate_median

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append("median")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    torch_impl.coordinate_median = spy  # type: ignore[assignment]
    try:
        aggregators.get("median")(x, F, impl="torch")
        assert calls == ["median"]
        aggregators.get("median")(x, F, impl="compiled")
        aggregators.get("median")(x, F)
        assert calls == ["median"]
    finally:
        torch_impl.coordinate_median = original  # type: ignore[assignment]


def test_gram_partial_terms_is_the_compiled_kernels_chunk() -> None:
    """A float32 sum of ``terms`` products just under max/terms stays finite, one more
    chunk-length sum of larger products overflows (what the leeway attacks size their step
    on)."""
    terms = kernels.gram_partial_terms(torch.float32)
    assert terms == _gram.CHUNK_BYTES // 4 and kernels.gram_partial_terms(torch.float64) == 512
    big = torch.finfo(torch.float32).max
    for impl_gram in (_gram.centered_gram, torch_impl.centered_gram):
        ok = torch.full((2, terms), (0.9 * big / terms) ** 0.5)
        assert bool(impl_gram(ok).isfinite().all())
        over = torch.full((2, terms), (1.1 * big / terms) ** 0.5)
        assert not bool(impl_gram(over).isfinite().any())
