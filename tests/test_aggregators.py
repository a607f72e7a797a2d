"""Aggregation rules against the papers' toy examples, straightforward reference
implementations, properties on random inputs, and hostile inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzsgd import aggregators as A

ROBUST = ["median", "trimmed-mean", "meamed", "krum", "multi-krum", "geomed", "medoid",
          "brute", "bulyan"]
COORDINATEWISE = ["median", "trimmed-mean", "meamed"]


# --- straightforward references (float64, loops where that is clearest) -------------------

def ref_median(x):
    s = x.double().sort(dim=0).values
    n = x.shape[0]
    return (s[(n - 1) // 2] + s[n // 2]) / 2


def ref_trimmed(x, f):
    s = x.double().sort(dim=0).values
    return s[f: x.shape[0] - f].mean(dim=0)


def ref_meamed(x, keep):
    x = x.double()
    med = ref_median(x)
    out = torch.empty(x.shape[1], dtype=torch.float64)
    for j in range(x.shape[1]):
        order = torch.argsort((x[:, j] - med[j]).abs(), stable=True)
        out[j] = x[order[:keep], j].mean()
    return out


def ref_sqdist(x):
    x = x.double()
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(dim=2)


def ref_krum_scores(x, f):
    d = ref_sqdist(x)
    n = x.shape[0]
    return torch.stack([torch.sort(torch.cat([d[i, :i], d[i, i + 1:]])).values[: n - f - 2].sum()
                        for i in range(n)])


def ref_krum(x, f):
    return int(torch.argmin(ref_krum_scores(x, f)))


def ref_multi_krum(x, f, m):
    chosen = torch.argsort(ref_krum_scores(x, f), stable=True)[:m]
    return x.double()[chosen].mean(dim=0), sorted(chosen.tolist())


def ref_medoid(x):
    return int(torch.argmin(ref_sqdist(x).sqrt().sum(dim=1)))


def ref_brute(x, f):
    d = ref_sqdist(x)
    n = x.shape[0]
    best = min(itertools.combinations(range(n), n - f),
               key=lambda s: (max(d[i, j] for i in s for j in s),
                              sum(d[i, j] for i in s for j in s)))
    return x.double()[list(best)].mean(dim=0), list(best)


def ref_bulyan(x, f):
    n = x.shape[0]
    remaining = list(range(n))
    selection = []
    for _ in range(n - 2 * f):
        sub = x[remaining]
        k = max(len(remaining) - f - 2, 0)
        d = ref_sqdist(sub)
        scores = [torch.sort(torch.cat([d[i, :i], d[i, i + 1:]])).values[:k].sum()
                  for i in range(len(remaining))]
        j = int(torch.argmin(torch.stack(scores)))
        selection.append(remaining.pop(j))
    selection.sort()
    return ref_meamed(x[selection], n - 4 * f), selection


def geomed_objective(x, z):
    return float((x.double() - z.double()).norm(dim=1).sum())


def ref_geomed(x, iters=2000, start=None):
    x = x.double()
    z = x.mean(dim=0) if start is None else start
    for _ in range(iters):
        w = 1 / (x - z).norm(dim=1).clamp(min=1e-12)
        z = (w[:, None] * x).sum(dim=0) / w.sum()
    return z


def close(a, b, tol=1e-5):
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)


# --- the papers' toy examples ---------------------------------------------------------------

def test_fall_of_empires_median_toy_example():
    """Fall of Empires 5.2.1: V = {-0.1, 0.1, 0.3}, U = {-4, -2}: the median is -0.1."""
    x = torch.tensor([-0.1, 0.1, 0.3, -4.0, -2.0])[:, None]
    assert A.median(x, 2).item() == pytest.approx(-0.1)
    assert A.median(x, 2).item() * x[:3].mean().item() < 0


def test_fall_of_empires_krum_toy_example():
    """Fall of Empires 5.3.1: Krum picks the Byzantine -0.1, with the paper's KR scores."""
    values = [-0.1, -0.1, -0.1, 0, 0.02, 0.14, 0.26, 0.38, 0.5]
    x = torch.tensor(values, dtype=torch.float64)[:, None]
    result = A.aggregate("krum", x, 3)
    assert result.value.item() == pytest.approx(-0.1)
    assert result.selected.tolist() == [0]
    paper = [0.0244, 0.0244, 0.0244, 0.0304, 0.0436, 0.1060, 0.1440, 0.2160, 0.4320]
    assert ref_krum_scores(x, 3).tolist() == pytest.approx(paper, abs=1e-4)


def test_precondition_messages_name_the_constraint():
    with pytest.raises(ValueError, match=r"krum needs n >= 2f \+ 3, got n=6, f=2"):
        A.krum(torch.randn(6, 3), 2)
    with pytest.raises(ValueError, match=r"bulyan needs n >= 4f \+ 3, got n=10, f=2"):
        A.bulyan(torch.randn(10, 3), 2)
    with pytest.raises(ValueError, match=r"trimmed-mean needs n > 2f"):
        A.trimmed_mean(torch.randn(4, 3), 2)
    with pytest.raises(ValueError, match=r"brute needs n >= 2f \+ 1"):
        A.brute(torch.randn(4, 3), 2)
    with pytest.raises(ValueError, match=r"multi-krum needs 1 <= m <= n, got n=9, f=1, m=10"):
        A.multi_krum(torch.randn(9, 3), 1, m=10)
    with pytest.raises(ValueError, match=r"multi-krum: m must be an int in \[1, inf\) or None, "
                                         r"got 0"):
        A.multi_krum(torch.randn(9, 3), 1, m=0)
    with pytest.raises(ValueError, match="max_subsets"):
        A.brute(torch.randn(40, 3), 15)
    with pytest.raises(ValueError, match="f must be >= 0"):
        A.median(torch.randn(5, 3), -1)
    with pytest.raises(ValueError, match="unknown aggregation rule 'krumm'"):
        A.get("krumm")
    with pytest.raises(ValueError, match="unknown parameter"):
        A.check("krum", 10, 2, m=3)
    with pytest.raises(ValueError, match="bulyan: base must be one of 'krum', 'medoid'"):
        A.check("bulyan", 11, 2, base="average")
    A.check("multi-krum", 10, 2, m=3)


def test_input_validation():
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        A.median(torch.randn(5), 1)
    with pytest.raises(TypeError, match="floating"):
        A.median(torch.ones(5, 3, dtype=torch.int64), 1)
    assert A.krum(torch.randn(7, 4, dtype=torch.float64), 1).dtype == torch.float64
    assert A.median(torch.randn(7, 4, dtype=torch.float16), 1).dtype == torch.float32


# --- agreement with the references on random inputs ----------------------------------------

SIZES = [(5, 1, 1), (7, 3, 2), (8, 9, 2), (11, 130, 2), (13, 77, 3), (20, 40, 4), (25, 64, 5)]


@pytest.mark.parametrize(("n", "d", "f"), SIZES)
def test_coordinatewise_match_references(n, d, f):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n * d))
    assert close(A.median(x, f), ref_median(x))
    assert close(A.trimmed_mean(x, f), ref_trimmed(x, f))
    assert close(A.meamed(x, f), ref_meamed(x, n - f))
    assert close(A.meamed(x, f, keep=n - 2 * f), ref_meamed(x, n - 2 * f))
    assert close(A.mean(x, f), x.double().mean(dim=0))


@pytest.mark.parametrize(("n", "d", "f"), [s for s in SIZES if s[0] >= 2 * s[2] + 3])
def test_distance_rules_match_references(n, d, f):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d))
    krum = A.aggregate("krum", x, f)
    assert krum.selected.tolist() == [ref_krum(x, f)]
    assert torch.equal(krum.value, x[ref_krum(x, f)])
    value, chosen = ref_multi_krum(x, f, n - f)
    mk = A.aggregate("multi-krum", x, f)
    assert mk.selected.tolist() == chosen and close(mk.value, value)
    value, chosen = ref_multi_krum(x, f, 3)
    assert close(A.multi_krum(x, f, m=3), value)
    medoid = A.aggregate("medoid", x, f)
    assert medoid.selected.tolist() == [ref_medoid(x)]


@pytest.mark.parametrize(("n", "d", "f"), [(7, 5, 1), (9, 30, 2), (11, 17, 3), (11, 50, 5)])
def test_brute_matches_reference(n, d, f):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(d))
    value, chosen = ref_brute(x, f)
    result = A.aggregate("brute", x, f)
    assert result.selected.tolist() == chosen
    assert close(result.value, value)


@pytest.mark.parametrize(("n", "d", "f"), [(7, 5, 1), (11, 40, 2), (15, 33, 3), (19, 70, 4)])
def test_bulyan_matches_reference(n, d, f):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(3 * d))
    value, chosen = ref_bulyan(x, f)
    result = A.aggregate("bulyan", x, f)
    assert result.selected.tolist() == chosen
    assert close(result.value, value)


@pytest.mark.parametrize("base", ["medoid", "geomed", "brute"])
def test_bulyan_other_bases_select_theta_rows(base):
    x = torch.randn(11, 20, generator=torch.Generator().manual_seed(5))
    result = A.aggregate("bulyan", x, 2, base=base)
    assert result.selected.numel() == 11 - 4
    assert torch.isfinite(result.value).all()


@pytest.mark.parametrize(("n", "d"), [(5, 3), (9, 50), (20, 200), (31, 7)])
def test_geomed_minimizes_the_sum_of_distances(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * 3 + 1
    z = A.geomed(x, 1, tol=1e-10, max_iter=1000)
    assert geomed_objective(x, z) <= geomed_objective(x, ref_geomed(x)) * (1 + 1e-6)
    # Weiszfeld's fixed point: the unit vectors towards the points sum to ~0.
    u = (x.double() - z.double())
    pull = (u / u.norm(dim=1, keepdim=True)).sum(dim=0).norm()
    assert pull < 1e-3 * n


def test_geomed_tolerance_and_iteration_cap_are_respected():
    x = torch.randn(15, 40, generator=torch.Generator().manual_seed(1))
    rough = A.geomed(x, 2, max_iter=1)
    # exactly one Weiszfeld step from the start: the mean of the rows whose sum of distances
    # to all rows is at most the (lower) median one
    totals = ref_sqdist(x).sqrt().sum(dim=1)
    central = totals <= totals.sort().values[(x.shape[0] - 1) // 2]
    assert close(rough, ref_geomed(x, iters=1, start=x.double()[central].mean(dim=0)))
    fine = A.geomed(x, 2, tol=1e-12, max_iter=500)
    assert geomed_objective(x, fine) <= geomed_objective(x, A.geomed(x, 2, tol=1e-2))


def test_float32_cancellation_is_avoided():
    """Rows = large common offset + small noise: float32 |a|^2 + |b|^2 - 2<a,b> cancels
    catastrophically; the centered Gram keeps Krum's choice and scores exact."""
    g = torch.Generator().manual_seed(0)
    x = 1e3 + 1e-3 * torch.randn(15, 20000, generator=g)
    for f in (2, 5):
        assert A.aggregate("krum", x, f).selected.tolist() == [ref_krum(x, f)]
        _, chosen = ref_multi_krum(x, f, 15 - f)
        assert A.aggregate("multi-krum", x, f).selected.tolist() == chosen
    assert A.aggregate("medoid", x, 2).selected.tolist() == [ref_medoid(x)]


# --- properties on random inputs -------------------------------------------------------------

def _cases():
    return st.tuples(st.integers(3, 4), st.integers(1, 40), st.integers(0, 10_000)).map(
        lambda t: (4 * t[0] + 3, t[1], t[0], t[2]))  # n >= 4f + 3 suits every rule


@settings(max_examples=25, deadline=None)
@given(_cases(), st.sampled_from([*ROBUST, "mean"]))
def test_permutation_invariance(case, name):
    n, d, f, seed = case
    f = min(f, 2) if name == "brute" else f
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    assert close(A.get(name)(x[perm], f), A.get(name)(x, f), 1e-6)


@settings(max_examples=25, deadline=None)
@given(_cases(), st.sampled_from([*ROBUST, "mean"]))
def test_translation_equivariance(case, name):
    n, d, f, seed = case
    f = min(f, 2) if name == "brute" else f
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    shift = torch.randn(d, generator=g, dtype=torch.float64) * 10
    assert close(A.get(name)(x + shift, f), A.get(name)(x, f) + shift, 1e-6)


HOSTILE = {
    "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 1e30,
    "-huge": -1e30, "big": 1e15,
}


@settings(max_examples=40, deadline=None)
@given(_cases(), st.sampled_from(COORDINATEWISE), st.lists(st.sampled_from(sorted(HOSTILE)),
                                                           min_size=1, max_size=4))
def test_coordinatewise_rules_stay_in_honest_range_under_dimensional_attack(case, name, kinds):
    """Generalized model (Def. 4): any f values per coordinate arbitrary; the output stays
    inside [min, max] of the correct values of that coordinate (Lemmas 4-5 of Xie et al.)."""
    n, d, f, seed = case
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(n, d, generator=g)
    x = honest.clone()
    bad = torch.zeros(n, d, dtype=torch.bool)
    for j in range(d):
        rows = torch.randperm(n, generator=g)[:f]
        bad[rows, j] = True
        for r in rows.tolist():
            x[r, j] = HOSTILE[kinds[(r + j) % len(kinds)]]
    out = A.get(name)(x, f)
    lo = torch.where(bad, torch.full_like(honest, float("inf")), honest).amin(dim=0)
    hi = torch.where(bad, torch.full_like(honest, -float("inf")), honest).amax(dim=0)
    assert torch.isfinite(out).all()
    assert ((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()


@settings(max_examples=40, deadline=None)
@given(_cases(), st.sampled_from(ROBUST), st.sampled_from(sorted(HOSTILE)))
def test_robust_rules_stay_finite_with_f_hostile_rows(case, name, kind):
    n, d, f, seed = case
    f = min(f, 2) if name == "brute" else f
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    rows = torch.randperm(n, generator=g)[:f]
    x[rows] = HOSTILE[kind]
    if kind in ("huge", "big"):
        x[rows] *= torch.randn(f, d, generator=g).sign()
    honest = torch.ones(n, dtype=torch.bool)
    honest[rows] = False
    result = A.aggregate(name, x, f)
    assert torch.isfinite(result.value).all(), name
    if name in ("bulyan", *COORDINATEWISE):  # per-coordinate guarantee
        lo, hi = x[honest].amin(dim=0), x[honest].amax(dim=0)
        assert ((result.value >= lo - 1e-5) & (result.value <= hi + 1e-5)).all()
    if name in ("krum", "medoid"):
        assert honest[result.selected].all()


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_mean_does_not_crash_on_hostile_rows(kind):
    x = torch.randn(7, 5)
    x[0] = HOSTILE[kind]
    A.mean(x, 1)


@pytest.mark.parametrize("name", [*ROBUST, "mean"])
def test_rules_never_modify_their_input(name):
    x = torch.randn(11, 33)
    x[3, 5] = float("nan")
    x[4] = 1e30
    before = x.clone()
    A.get(name)(x, 2)
    assert torch.equal(torch.nan_to_num(x), torch.nan_to_num(before))
    assert torch.isnan(x[3, 5])


def test_selection_report_for_every_rule():
    x = torch.randn(11, 8)
    for name in A.names():
        result = A.aggregate(name, x, 2)
        assert (result.selected is not None) == A.spec(name).selects_rows
    assert A.bind("multi-krum", 2, m=4).select(x).selected.numel() == 4


def test_linf_distance_rules():
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = (x[:, None] - x[None]).abs().amax(dim=2) ** 2
    n, f = 9, 2
    scores = torch.stack([torch.sort(torch.cat([d[i, :i], d[i, i + 1:]])).values[: n - f - 2].sum()
                          for i in range(n)])
    assert A.aggregate("krum", x, f, p=float("inf")).selected.tolist() == [int(scores.argmin())]


@pytest.mark.parametrize("gamma", [1e3, 1e9, 1e18, 1e30])
def test_rows_far_on_one_unsampled_coordinate_leave_the_other_distances_exact(gamma):
    """The Gram matrix's pivot is chosen on a sample of coordinates; rows that sit at the
    bulk's center there but far away on another coordinate (the leeway attack) must not
    become the centre, which would cancel every other distance away or overflow it."""
    from byzsgd.aggregators.distances import geometry

    g = torch.Generator().manual_seed(2)
    honest = 0.1 * torch.randn(30, 2000, generator=g) + 0.05 * torch.randn(2000, generator=g)
    far = honest.mean(dim=0).clone()
    far[5] -= gamma  # column 5 is not among the sampled ones (every third column here)
    x = torch.cat([honest, far.expand(9, -1)])
    geo = geometry(x)
    assert bool(geo.valid[:30].all())
    want = torch.cdist(honest.double(), honest.double()).square()
    torch.testing.assert_close(geo.sqdist[:30, :30], want, rtol=1e-4, atol=1e-3)
    if gamma ** 2 > torch.finfo(torch.float32).max:  # its square overflows: an invalid row
        assert not bool(geo.valid[30:].any())
        return
    assert float(geo.sqdist[30:, 30:].max()) == 0.0
    # Bulyan's last pick is then a far copy, whatever gamma (its Krum score is 0)
    assert int(A.aggregate("bulyan", x, 9).selected.max()) >= 30
