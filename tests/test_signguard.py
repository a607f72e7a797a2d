"""SignGuard (Xu et al., ICDCS 2022): a worked example, a float64 loop reference with its own
mean shift, hostile rows, permutation invariance with ties, seeding, both kernel
implementations, the bound rule's per-round generator, parameter checks."""

from __future__ import annotations

import math

import pytest
import torch
from hostile_inputs import HOSTILE, gen, honest_and_hostile

from byzsgd import aggregators as A
from byzsgd.aggregators.signguard import mean_shift


def ref_mean_shift(points, h):
    """Plain-loop flat mean shift: the label-0 (largest) cluster as a set of row indices."""
    n = len(points)

    def near(c):
        return [j for j in range(n) if math.dist(points[j], c) <= h]

    centers = {}
    for i in range(n):
        c = list(points[i])
        for _ in range(300):
            w = near(c)
            new = [sum(points[j][k] for j in w) / len(w) for k in range(3)]
            moved = math.dist(new, c)
            c = new
            if moved <= 1e-3 * h:
                break
        centers[tuple(c)] = len(near(c))
    kept = []
    for c, _ in sorted(centers.items(), key=lambda t: (-t[1], t[0])):
        if all(math.dist(c, k) > h for k in kept):
            kept.append(c)
    members = [[] for _ in kept]
    for j in range(n):
        dists = [math.dist(points[j], k) for k in kept]
        best = min(range(len(kept)), key=lambda t: (dists[t], t))
        if dists[best] <= h:
            members[best].append(j)
    top = max(range(len(kept)), key=lambda t: (len(members[t]), -t))
    return set(members[top])


def ref_signguard(x, f, coords, lower=0.1, upper=3.0):
    x = x.double()
    n = x.shape[0]
    norms = [math.sqrt(sum(float(v) ** 2 for v in row)) for row in x]
    med = sorted(v if not math.isnan(v) else math.inf for v in norms)[(n - 1) // 2]
    s1 = {i for i in range(n) if math.isfinite(norms[i]) and lower * med <= norms[i] <= upper * med}
    points = []
    for row in x:
        sub = [float(row[c]) for c in coords]
        points.append((sum(v > 0 for v in sub), sum(v == 0 for v in sub), sum(v < 0 for v in sub)))
    k = max(1, int(n * 0.5))
    h = sum(sorted(math.dist(p, q) for q in points)[k - 1] for p in points) / n
    chosen = sorted(s1 & ref_mean_shift(points, h)) or sorted(s1)
    out = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in chosen:
        out += x[i] * min(1.0, med / norms[i]) if norms[i] > 0 else x[i]
    return out / len(chosen), chosen


def test_worked_example():
    # honest a * (1, 1, 1, 1), a = 1..4 (norms 2, 4, 6, 8); one row 100 (norm 200, off the
    # norm filter), two rows -2.5 (norm 5, the other sign cluster). Median norm 5; the rows
    # 3 and 4 are clipped to 2.5; output (1 + 2 + 2.5 + 2.5) / 4 = 2 on every coordinate
    x = torch.tensor([[1.0] * 4, [2.0] * 4, [3.0] * 4, [4.0] * 4, [100.0] * 4, [-2.5] * 4,
                      [-2.5] * 4])
    res = A.aggregate("signguard", x, 2, fraction=1.0)
    torch.testing.assert_close(res.value, torch.full((4,), 2.0))
    assert res.selected.tolist() == [0, 1, 2, 3]


def draw(d, fraction, seed):
    b = min(d, max(1, math.ceil(fraction * d)))
    start = int(torch.randint(0, d - b + 1, (1,), generator=gen(seed))) if b < d else 0
    return list(range(start, start + b))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_reference(seed, dtype):
    g = gen(100 + seed)
    n, f, d = (7, 11, 15)[seed % 3], (1, 3, 4)[seed % 3], (40, 64, 90)[seed % 3]
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.3
    x[:f] = -x[:f] * (0.5 + 3 * seed)  # flipped signs; some of them off the norm filter
    x = x.to(dtype)
    fraction = (0.1, 0.5, 1.0)[seed % 3]
    res = A.aggregate("signguard", x, f, fraction=fraction, seed=seed)
    want, rows = ref_signguard(x, f, draw(d, fraction, seed))
    assert res.selected.tolist() == rows
    torch.testing.assert_close(res.value.double(), want, rtol=1e-5, atol=1e-5)


def test_mean_shift_clusters():
    points = torch.tensor([[10, 0, 0], [10, 0, 0], [9, 0, 1], [0, 0, 10], [0, 1, 9],
                           [5, 5, 0]], dtype=torch.float64).numpy()
    labels = mean_shift(points, 1.5)
    assert labels.tolist() == [0, 0, 0, 1, 1, 2]  # a lone point seeds its own cluster


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_rows_never_selected(value):
    x = honest_and_hostile(value, n=11, f=3, d=64)
    res = A.aggregate("signguard", x, 3)
    assert torch.isfinite(res.value).all()
    assert set(res.selected.tolist()) <= set(range(8))
    want, rows = ref_signguard(x, 3, draw(64, 0.1, 0))
    assert res.selected.tolist() == rows
    torch.testing.assert_close(res.value.double(), want, rtol=1e-5, atol=1e-5)


def test_permutation_invariant_with_copies():
    g = gen(5)
    x = torch.randn(11, 50, generator=g, dtype=torch.float64)
    x[8:] = -x[0]  # three copies, opposite signs
    x[1] = x[2]
    out = A.aggregate("signguard", x, 3, fraction=0.5)
    for _ in range(5):
        perm = torch.randperm(11, generator=g)
        res = A.aggregate("signguard", x[perm], 3, fraction=0.5)
        torch.testing.assert_close(res.value, out.value, rtol=1e-12, atol=1e-12)
        assert sorted(perm[res.selected].tolist()) == out.selected.tolist()


def test_seeded_coordinates():
    x = torch.randn(9, 200, generator=gen(6))
    x[:3, :100] = -x[:3, :100].abs()
    x[3:, :100] = x[3:, :100].abs()
    a = A.aggregate("signguard", x, 2, fraction=0.05, seed=1).value
    torch.testing.assert_close(A.aggregate("signguard", x, 2, fraction=0.05, seed=1).value, a)
    b = A.aggregate("signguard", x, 2, fraction=0.05, generator=gen(1)).value
    torch.testing.assert_close(b, a)  # seed=s draws as a generator seeded with s


def test_bound_rule_draws_per_round():
    bound = A.bind("signguard", 2, round_seed=3)
    assert isinstance(bound, A.Chain) and bound.stateful
    x = torch.randn(9, 40, generator=gen(7))
    first = bound(x)
    torch.testing.assert_close(bound(x), first)  # select does not advance the round
    bound.commit(first)
    assert bound.state["round"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_and_compiled_agree(dtype):
    x = torch.randn(13, 3000, generator=gen(4), dtype=dtype)
    x[10:] = -3.0
    a = A.aggregate("signguard", x, 3, impl="torch")
    b = A.aggregate("signguard", x, 3, impl="compiled")
    torch.testing.assert_close(a.value, b.value)
    assert a.selected.tolist() == b.selected.tolist()


def test_preconditions():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"signguard needs f < n/2"):
        A.signguard(x, 3)
    for bad in ({"lower": 0.0}, {"lower": 1.5}, {"upper": 0.5}, {"fraction": 0.0},
                {"fraction": 1.5}, {"seed": -1}):
        with pytest.raises(ValueError):
            A.aggregate("signguard", x, 1, **bad)
