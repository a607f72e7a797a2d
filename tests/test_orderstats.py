"""The compiled order statistics against two independent references: numpy's sort (the
definition: the same values, up to the sign of a zero that ties with another), and a numpy
simulation of the pruned Batcher network the kernels have always applied (the same floats, bit
for bit, signed zeros included), on random, tied and hostile inputs, odd and even n, awkward d,
row subsets (Bulyan's second phase), float32 and float64, one thread and several."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from byzsgd import kernels
from byzsgd.aggregators import _orderstats as ost

HOSTILE = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e-45]


def make(kind: str, m: int, d: int, dtype: type, seed: int) -> np.ndarray:
    """Random (``normal``), heavily tied with signed zeros (``tied``), or normal with NaN, Inf,
    huge, subnormal and zero values scattered and whole rows of NaN and +-Inf (``hostile``)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, d)).astype(dtype)
    if kind == "tied":
        x = (np.round(x * 2) / 2).astype(dtype)
        zeros = x == 0
        x[zeros] = rng.choice(np.array([0.0, -0.0], dtype=dtype), size=int(zeros.sum()))
    elif kind == "hostile":
        mask = rng.random((m, d)) < 0.25
        x[mask] = rng.choice(np.array(HOSTILE, dtype=dtype), size=int(mask.sum()))
        if m >= 3:
            x[rng.integers(m)] = np.nan
            x[rng.integers(m)] = rng.choice([np.inf, -np.inf])
    return x


def sorted_columns(x: np.ndarray) -> np.ndarray:
    return np.sort(np.where(np.isnan(x), np.inf, x), axis=0)


def seq_sum(rows: np.ndarray) -> np.ndarray:
    """rows[0] + rows[1] + ... in this order, in the rows' precision (the kernels' order)."""
    acc = np.zeros(rows.shape[1], dtype=rows.dtype)
    for r in rows:
        acc = acc + r
    return acc


def ref_median(s: np.ndarray) -> np.ndarray:
    m = s.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        return (s[(m - 1) // 2] + s[m // 2]) * s.dtype.type(0.5)


def ref_trimmed(s: np.ndarray, b: int) -> np.ndarray:
    m = s.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        return seq_sum(s[b:m - b]) / s.dtype.type(m - 2 * b)


def ref_meamed(s: np.ndarray, keep: int) -> np.ndarray:
    """Documented: the window of ``keep`` consecutive sorted values whose farther end is
    nearest the median; the first on ties, the first window when no score is finite."""
    m, d = s.shape
    med = ref_median(s)
    best = np.zeros(d, dtype=np.int64)
    best_score = np.full(d, np.inf, dtype=s.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        for t in range(m - keep + 1):
            left = med - s[t]
            right = s[t + keep - 1] - med
            score = np.where(left > right, left, right)
            better = score < best_score
            best_score = np.where(better, score, best_score)
            best = np.where(better, t, best)
        window = np.take_along_axis(s, best[None, :] + np.arange(keep)[:, None], axis=0)
        return seq_sum(window) / s.dtype.type(keep)


def network_columns(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The pruned Batcher network on the columns of ``x`` (NaN read as +inf), each comparator
    as ``p if p < q else q`` / ``q if p < q else p``: which of two tied zeros lands where."""
    v = np.where(np.isnan(x), np.inf, x).copy()
    for a, b in ost.prune(ost.sorting_network(x.shape[0]), set(range(lo, hi + 1))):
        p, q = v[a].copy(), v[b].copy()
        less = p < q
        v[a] = np.where(less, p, q)
        v[b] = np.where(less, q, p)
    return v


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.int64 if a.dtype == np.float64 else np.int32)


def rules(m: int):
    """(name, kernel call, sorted-values reference, network positions) for every f."""
    for f in range(0, (m - 1) // 2 + 1):
        yield (f"median f={f}", lambda t, r: ost.coordinate_median(t, r),
               ref_median, ((m - 1) // 2, m // 2))
        yield (f"trimmed b={f}", lambda t, r, f=f: ost.coordinate_trimmed_mean(t, f, r),
               lambda s, f=f: ref_trimmed(s, f), (f, m - f - 1))
        for keep in sorted({m - f, max(1, m - 2 * f), 1, m}):
            yield (f"meamed keep={keep}",
                   lambda t, r, keep=keep: ost.coordinate_mean_around_median(t, keep, r),
                   lambda s, keep=keep: ref_meamed(s, keep), (0, m - 1))


def check(x: np.ndarray, rows: np.ndarray | None = None, exact: bool = True) -> None:
    sub = x if rows is None else x[rows]
    m = sub.shape[0]
    s = sorted_columns(sub)
    t = torch.from_numpy(x)
    r = None if rows is None else torch.from_numpy(rows)
    for name, call, ref, (lo, hi) in rules(m):
        got = call(t, r).numpy()
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, ref(s), err_msg=name)
        if exact:
            net = network_columns(sub, lo, hi)
            if name.startswith("median"):
                want = ref_median(net)
            elif name.startswith("trimmed"):
                want = ref_trimmed(net, int(name.split("=")[1]))
            else:
                want = ref_meamed(net, int(name.split("=")[1]))
            assert np.array_equal(bits(got), bits(want)), f"{name}: not the network's bits"


@pytest.mark.parametrize("kind", ["normal", "tied", "hostile"])
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 16, 17, 24, 27, 33, 51])
def test_against_numpy_and_the_network(kind: str, m: int) -> None:
    for d, dtype in [(1, np.float32), (7, np.float64), (8, np.float32), (9, np.float32),
                     (1025, np.float32)]:
        check(make(kind, m, d, dtype, seed=m * 31 + d))


@pytest.mark.parametrize("kind", ["tied", "hostile"])
def test_row_subsets(kind: str) -> None:
    """Bulyan's second phase reads a subset of the rows in place, in any order."""
    rng = np.random.default_rng(5)
    for m, d in [(11, 9), (23, 70), (51, 130)]:
        x = make(kind, m, d, np.float32, seed=m)
        for size in (1, 3, 8, m // 2 + 1, 16, 27):
            if size <= m:
                check(x, rng.choice(m, size=size, replace=False).astype(np.int64))


@pytest.mark.slow
@pytest.mark.parametrize("m", [6, 17])
def test_awkward_large_d_on_two_threads(m: int) -> None:
    """d = 1e6 + 3: many blocks, a partial last block and sub-block, the thread pool."""
    x = make("hostile", m, 1_000_003, np.float32, seed=m)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        check(x, exact=False)
        t = torch.from_numpy(x)
        serial = ost.coordinate_trimmed_mean(t[:, -5000:], 2).numpy()
        parallel = ost.coordinate_trimmed_mean(t, 2).numpy()[-5000:]
        assert np.array_equal(bits(serial), bits(parallel))
    finally:
        torch.set_num_threads(threads)


def test_network_sorts_every_zero_one_input() -> None:
    """The 0-1 principle: a comparator network sorts everything iff it sorts all 0/1 inputs;
    for m <= 12 each input is a column, which also exercises the register stages."""
    for m in range(1, 13):
        cols = ((np.arange(2 ** m)[None, :] >> np.arange(m)[:, None]) & 1).astype(np.float32)
        for b in range(0, (m - 1) // 2 + 1):
            got = ost.coordinate_trimmed_mean(torch.from_numpy(cols), b).numpy()
            want = np.sort(cols, axis=0)[b:m - b].sum(axis=0) / (m - 2 * b)
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_plan_moves_only_register_stages() -> None:
    """The comparators the kernel runs from its list are the pruned network's in order, less
    those of the register stages: stages p < 8 inside full groups of 8 wires and p = 8 inside
    full aligned groups of 16."""
    for m in (7, 8, 9, 16, 17, 27, 51, 64):
        for lo, hi in [((m - 1) // 2, m // 2), (0, m - 1), (m // 4, m - 1 - m // 4)]:
            groups, blocks16, rest = ost._plan(m, lo, hi)
            assert (groups, blocks16) == (m // 8, m // 16)
            staged = ost._staged_network(m)
            pruned = ost.prune([(a, b) for a, b, _ in staged], set(range(lo, hi + 1)))
            stage = {}
            for a, b, p in staged:
                stage.setdefault((a, b), []).append(p)
            listed = iter(tuple(map(int, c)) for c in rest)
            nxt = next(listed, None)
            for pair in pruned:
                if pair == nxt:
                    nxt = next(listed, None)
                    continue
                a, b = pair
                assert any((p < 8 and b < 8 * groups) or (p == 8 and b < 16 * blocks16)
                           for p in stage[pair]), (m, pair)
            assert nxt is None


def test_describe_names_the_vector_isa_and_variant() -> None:
    name, bits_, regs = kernels.vector_isa()
    text = kernels.describe()
    assert name in text and f"{bits_}-bit" in text
    assert ost.VARIANT in text
    assert regs in (0, 16, 32)


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["1", "2"])
def test_benchmark_runs(threads: str) -> None:
    """benchmarks/orderstats.py stays runnable and prints the variant and every rule."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "orderstats.py"), "--n", "9", "--d", "3000",
         "--f", "2", "--repeats", "1", "--threads", threads],
        cwd=root, capture_output=True, text=True, timeout=600, check=True).stdout
    assert ost.VARIANT in out
    for name in ("read pass", "median", "trimmed-mean", "meamed", "bulyan-phase2"):
        assert f"{name}:" in out
