"""Distance-based rules against independent float64 references when one or two Byzantine rows
sit at any magnitude from 1 to float32's largest (Issue 17, items 1-3).

The references below work on coordinates, in float64, with plain loops: no Gram matrix, no
centering, no pivot. They share only the rules' definitions, including the one convention that
is not in the papers: a row with a NaN or infinite value, or whose squared distances overflow
the input's precision (float32 rows of 1e20 and more), is *invalid*: at +inf from every row, it
is never selected and never enters a geometric median, while it still counts in n.
"""

from __future__ import annotations

import decimal
import itertools

import pytest
import torch

from byzsgd import aggregators as A

F32_MAX = torch.finfo(torch.float32).max
MAGNITUDES = [1.0, 1e10, 1e15, 1e20, 1e30, F32_MAX]
N, F, D = 11, 2, 1000
RULES = [("krum", {}), ("multi-krum", {}), ("medoid", {}), ("brute", {}), ("geomed", {}),
         ("bulyan", {"base": "krum"}), ("bulyan", {"base": "medoid"}),
         ("bulyan", {"base": "geomed"}), ("bulyan", {"base": "brute"})]


# --- float64 references on coordinates ------------------------------------------------------

def ref_valid(x):
    """Finite values, and squared norm representable in the input's precision."""
    big = torch.finfo(x.dtype).max
    out = []
    for row in x.double():
        out.append(bool(torch.isfinite(row).all()) and float((row * row).sum()) <= big)
    return out


def ref_dist(x, valid):
    """Euclidean distances, one pair at a time; +inf to and from invalid rows."""
    y = x.double()
    n = y.shape[0]
    d = torch.full((n, n), float("inf"), dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if valid[i] and valid[j]:
                d[i, j] = float(((y[i] - y[j]) ** 2).sum().sqrt())
    return d


def ref_exact_dist(x, valid):
    """Euclidean distances in 120-digit decimal arithmetic (from the exact float values): the
    Medoid's sums of distances next to a far row need more than float64 holds (a distance of
    3e21 to the far row is rounded by ~1e5, more than the honest rows' differences)."""
    ctx = decimal.Context(prec=120)
    rows = [[decimal.Decimal(v) for v in row.tolist()] for row in x.double()]
    n = len(rows)
    d = [[decimal.Decimal("Infinity")] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            if valid[i] and valid[j]:
                total = decimal.Decimal(0)
                for a, b in zip(rows[i], rows[j], strict=True):
                    diff = ctx.subtract(a, b)
                    total = ctx.add(total, ctx.multiply(diff, diff))
                d[i][j] = d[j][i] = ctx.sqrt(total)
    return d


def ref_krum_scores(d, rows, f, y=None):
    """Krum's score of each row (the sum of its k = n' - f - 2 smallest squared distances)
    or, with the rows ``y``, its sort key: the score, then the squared distances beyond the k
    nearest (nearest first), then the row's values. Ties are structural, not rare: with k = 1
    (Bulyan's last iteration for f = 2) two mutual nearest neighbours share their score."""
    k = len(rows) - f - 2
    keys = {}
    for i in rows:
        near = sorted(float(d[i, j]) ** 2 for j in rows if j != i)
        keys[i] = sum(near[:k]) if y is None else (sum(near[:k]), near[k:], y[i].tolist())
    return keys


def ref_medoid(exact, rows, valid):
    live = [i for i in rows if valid[i]]
    with decimal.localcontext(decimal.Context(prec=120)):
        return min(live, key=lambda i: sum(exact[i][j] for j in live))


def ref_brute_subset(d, rows, f):
    best = min(itertools.combinations(rows, len(rows) - f),
               key=lambda s: (max(float(d[i, j]) ** 2 for i in s for j in s),
                              sum(float(d[i, j]) ** 2 for i in s for j in s)))
    return list(best)


def ref_weiszfeld(points):
    """Geometric median of the rows of ``points`` (float64), from their coordinate-wise
    median, to a step of 1e-13 of the median distance."""
    z = points.median(dim=0).values
    for _ in range(5000):
        dist = torch.stack([(p - z).norm() for p in points])
        w = 1.0 / dist.clamp(min=1e-300)
        new = (w[:, None] * points).sum(dim=0) / w.sum()
        step = float((new - z).norm())
        z = new
        if step <= 1e-13 * float(dist.median()):
            break
    return z


def ref_nearest(y, rows, valid, z):
    live = [i for i in rows if valid[i]]
    return min(live, key=lambda i: float((y[i] - z).norm()))


def ref_mean_around_median(y, rows, beta):
    sel = y[rows]
    out = torch.empty(y.shape[1], dtype=torch.float64)
    for c in range(y.shape[1]):
        values = sorted(sel[:, c].tolist())
        m = len(values)
        med = (values[(m - 1) // 2] + values[m // 2]) / 2
        out[c] = sum(sorted(values, key=lambda v: abs(v - med))[:beta]) / beta
    return out


def reference(name, params, x, f):
    """(value, selected rows or None) of the rule on x, in float64."""
    y = x.double()
    n = x.shape[0]
    valid = ref_valid(x)
    d = ref_dist(x, valid)
    exact = ref_exact_dist(x, valid) if "medoid" in (name, params.get("base")) else None
    everyone = list(range(n))
    if name == "krum":
        scores = ref_krum_scores(d, everyone, f, y)
        best = min(everyone, key=lambda i: scores[i])
        return y[best], [best]
    if name == "multi-krum":
        scores = ref_krum_scores(d, everyone, f, y)
        chosen = sorted(sorted(everyone, key=lambda i: scores[i])[: n - f])
        return y[chosen].mean(dim=0), chosen
    if name == "medoid":
        best = ref_medoid(exact, everyone, valid)
        return y[best], [best]
    if name == "brute":
        chosen = ref_brute_subset(d, everyone, f)
        return y[chosen].mean(dim=0), chosen
    if name == "geomed":
        return ref_weiszfeld(y[[i for i in everyone if valid[i]]]), None
    assert name == "bulyan"
    base = params["base"]
    remaining, selection = list(everyone), []
    for _ in range(n - 2 * f):
        if base == "krum":
            scores = ref_krum_scores(d, remaining, f, y)
            pick = min(remaining, key=lambda i: scores[i])
        elif base == "medoid":
            pick = ref_medoid(exact, remaining, valid)
        elif base == "geomed":
            z = ref_weiszfeld(y[[i for i in remaining if valid[i]]])
            pick = ref_nearest(y, remaining, valid, z)
        else:
            z = y[ref_brute_subset(d, remaining, f)].mean(dim=0)
            pick = ref_nearest(y, remaining, valid, z)
        selection.append(pick)
        remaining.remove(pick)
    selection.sort()
    return ref_mean_around_median(y, selection, n - 4 * f), selection


def hostile_input(magnitude, dtype, seed, rows=(0,)):
    """N(0, 1) rows (n = 11, d = 1000); ``rows`` replaced by +-magnitude per coordinate
    (random signs), the first at +magnitude on every coordinate (the issue's ``x[0] = 1e10``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    for k, r in enumerate(rows):
        sign = torch.ones(D, dtype=torch.float64) if k == 0 else torch.randn(
            D, generator=g, dtype=torch.float64).sign()
        x[r] = sign * magnitude
    return x.to(dtype)


def _check(name, params, x, f):
    got = A.aggregate(name, x, f, **params)
    want, chosen = reference(name, params, x, f)
    if chosen is not None:
        assert got.selected.tolist() == chosen
    scale = D ** 0.5  # the honest rows' distance to their mean
    err = float((got.value.double() - want).norm())
    assert err <= 1e-4 * scale, f"{name} {params}: {err:.3g} from the float64 reference"


# --- 1: one or two far finite rows ------------------------------------------------------------

@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "params"), RULES, ids=[
    f"{n}-{p.get('base', '')}".rstrip("-") for n, p in RULES])
def test_distance_rules_match_the_float64_reference_at_every_magnitude(name, params, dtype,
                                                                       magnitude):
    """Issue 17: ``x[0] = 1e10`` moved geomed ~3,000 from the honest mean (the float64
    Weiszfeld: 3.0), 1e15 ~3e8: Weiszfeld's start, floor and stopping rule were scaled by
    sums that the far row dominates. Every distance rule is checked, at every magnitude."""
    _check(name, params, hostile_input(magnitude, dtype, seed=17), F)


@pytest.mark.parametrize("magnitude", [1e10, 1e15, 1e20, F32_MAX])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "params"), RULES, ids=[
    f"{n}-{p.get('base', '')}".rstrip("-") for n, p in RULES])
def test_two_far_rows_in_opposite_corners(name, params, dtype, magnitude):
    _check(name, params, hostile_input(magnitude, dtype, seed=5, rows=(3, 9)), F)


@pytest.mark.parametrize("magnitude", [1e10, 1e15, 1e30])
def test_geomed_stays_near_the_honest_rows_with_f_far_copies_at_n_2f_plus_1(magnitude):
    """n = 2f + 1, f identical far rows: from the plain mean, Weiszfeld sheds their weight by
    a factor f / (f + 1) per step only, and stopped long before reaching the honest rows."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 200, generator=g, dtype=torch.float64)
    x[5:] = magnitude
    got = A.geomed(x, 4).double()
    want = ref_weiszfeld(x)
    assert float((got - want).norm()) <= 1e-4 * 200 ** 0.5


# --- 2: identical rows ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 6, 11, 51])
def test_geomed_of_identical_rows_is_that_row(n, dtype):
    """5 or more identical rows gave the zero vector (1 / tiny weights overflowed)."""
    row = torch.randn(40, generator=torch.Generator().manual_seed(n), dtype=dtype) + 3
    x = row.expand(n, -1).clone()
    assert torch.equal(A.geomed(x, (n - 1) // 2), row)


@pytest.mark.parametrize("copies", [6, 7, 10])
def test_geomed_is_the_point_that_a_majority_of_rows_share(copies):
    """A point that more than half the rows share is their geometric median."""
    g = torch.Generator().manual_seed(copies)
    x = torch.randn(11, 30, generator=g, dtype=torch.float64)
    x[:copies] = x[0]
    x = x[torch.randperm(11, generator=g)]
    counts = [int(x.eq(r).all(dim=1).sum()) for r in x]
    shared = x[max(range(x.shape[0]), key=lambda i: counts[i])]
    torch.testing.assert_close(A.geomed(x, 2), shared, atol=1e-9, rtol=0)


# --- 3: Bulyan with absent workers (NaN rows), and ties ---------------------------------------

@pytest.mark.parametrize("base", ["krum", "medoid", "geomed", "brute"])
@pytest.mark.parametrize("nan_row", [0, 4, 10])
def test_bulyan_keeps_selecting_around_a_nan_row(base, nan_row):
    """The distributed runtime sends an absent worker as a NaN row: Bulyan(geomed) and
    Bulyan(brute) then took the first n - 2f valid rows by index, an outlier included."""
    g = torch.Generator().manual_seed(nan_row)
    x = torch.randn(N, 20, generator=g, dtype=torch.float64)
    x[nan_row] = float("nan")
    outlier = 1 if nan_row != 1 else 2
    x[outlier] = 30.0
    got = A.aggregate("bulyan", x, F, base=base)
    want, chosen = reference("bulyan", {"base": base}, x, F)
    assert got.selected.tolist() == chosen
    assert outlier not in chosen and nan_row not in chosen
    torch.testing.assert_close(got.value, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("base", ["krum", "medoid", "geomed", "brute"])
@pytest.mark.parametrize("seed", range(8))
def test_bulyan_does_not_depend_on_the_row_order(base, seed):
    """Bulyan(krum) with f = 1 ends on 3 rows and 0 neighbours: every score ties at 0, and the
    lower index won (the simulator numbers the Byzantine rows last)."""
    g = torch.Generator().manual_seed(seed)
    n, f = (7, 1) if seed % 2 else (11, 2)
    x = torch.randn(n, 30, generator=g)
    if seed % 4 == 3:
        x[n - 2:] = x[0]  # copies: ties between equal rows
    want = A.bulyan(x, f, base=base)
    for _ in range(3):
        perm = torch.randperm(n, generator=g)
        torch.testing.assert_close(A.bulyan(x[perm], f, base=base), want, atol=1e-5, rtol=0)
