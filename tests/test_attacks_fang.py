"""Fang et al. (USENIX Security 2020): the attack on trimmed mean / median against a worked
example and a plain per-coordinate loop; the attack on Krum's lambda bound against a plain
loop, its halving search, the closed-form geometry against running the rule; checks."""

from __future__ import annotations

import math

import pytest
import torch

from byzsgd import aggregators as G
from byzsgd import attacks as A


def honest_rows(h=9, d=20, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((h, d), generator=g, dtype=torch.float64) * 0.5 + 0.2).to(dtype)


# --- trimmed mean / median -------------------------------------------------------------------

def reference_trim(x, f, b, generator):
    """Section 4.3 in gradient space, one coordinate and one worker at a time."""
    h, d = x.shape
    u = torch.rand((f, d), generator=generator, dtype=x.dtype).mul_(b - 1.0).add_(1.0)
    out = torch.zeros((f, d), dtype=x.dtype)
    for j in range(d):
        column = [float(x[i, j]) for i in range(h)]
        total = sum(column)
        for k in range(f):
            if total > 0:  # the parameter would decrease: go below the smallest gradient
                low = min(column)
                out[k, j] = low / u[k, j] if low > 0 else low * u[k, j]
            elif total < 0:
                high = max(column)
                out[k, j] = high * u[k, j] if high > 0 else high / u[k, j]
    return out


def test_trim_worked_example():
    """Column 0: sum 6 > 0, min 1 > 0 -> values in [1/2, 1]; column 1: sum -3 < 0, max 0 ->
    0; column 2: sum 6, min 1 -> [1/2, 1]; column 3: sum -6, max -1 < 0 -> [-1, -1/2];
    column 4: sum 0 -> 0; column 5: sum 3 > 0, min -1 -> [-2, -1]."""
    x = torch.tensor([[1.0, -1.0, 2.0, -3.0, 1.0, -1.0],
                      [2.0, -2.0, 3.0, -1.0, -1.0, 2.0],
                      [3.0, 0.0, 1.0, -2.0, 0.0, 2.0]], dtype=torch.float64)
    rows = A.get("fang-trim")(honest=x, f=50, generator=torch.Generator().manual_seed(0))
    lo = torch.tensor([0.5, 0.0, 0.5, -1.0, 0.0, -2.0], dtype=torch.float64)
    hi = torch.tensor([1.0, 0.0, 1.0, -0.5, 0.0, -1.0], dtype=torch.float64)
    assert bool(((rows >= lo) & (rows <= hi)).all())
    assert float(rows[:, 0].std()) > 0.05  # drawn per worker, not one value


@pytest.mark.parametrize("b", [2.0, 1.5, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trim_equals_the_plain_loop(b, dtype):
    x = honest_rows(h=7, d=30, dtype=dtype)
    x[:, 3] = torch.tensor([-1.0, 1.0, -2.0, 2.0, 0.0, 0.5, -0.5], dtype=dtype)  # sum 0
    got = A.get("fang-trim", b=b)(honest=x, f=3, generator=torch.Generator().manual_seed(4))
    want = reference_trim(x, 3, b, torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, want)


def test_trim_pushes_median_and_trimmed_mean_against_the_mean():
    x = honest_rows(h=15, d=400, seed=3)
    rows = A.get("fang-trim")(honest=x, f=6, generator=torch.Generator().manual_seed(0))
    truth = x.mean(dim=0)
    for rule in ("median", "trimmed-mean"):
        clean = G.get(rule)(x, 0)
        attacked = G.get(rule)(torch.cat([x, rows]), 6)
        assert float(attacked @ truth) < float(clean @ truth) - 0.1 * float(truth @ truth)


def test_trim_seeded_and_checks():
    x = honest_rows()
    run = lambda s: A.get("fang-trim")(honest=x, f=2, generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    with pytest.raises(ValueError, match=r"fang-trim: b must be a float in \(1, inf\), got 1"):
        A.get("fang-trim", b=1.0)
    with pytest.raises(ValueError, match="b must be a float"):
        A.get("fang-trim", b=float("nan"))
    with pytest.raises(ValueError, match="knowledge"):
        A.get("fang-trim", knowledge="own")
    bad = x.clone()
    bad[2, 0] = float("nan")
    got = A.get("fang-trim")(honest=bad, f=2, n=11, generator=torch.Generator().manual_seed(1))
    keep = torch.tensor([i for i in range(9) if i != 2])
    torch.testing.assert_close(got, A.get("fang-trim")(
        honest=x[keep], f=2, generator=torch.Generator().manual_seed(1)))


# --- Krum ------------------------------------------------------------------------------------

def reference_bound(x, n, f):
    """lambda's upper bound of 4.2 by plain loops (gradient units)."""
    rows = x.double().tolist()
    h, d = len(rows), len(rows[0])

    def dist(u, v):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v, strict=True)))

    sums = []
    for i in range(h):
        near = sorted(dist(rows[i], rows[j]) for j in range(h) if j != i)[: n - f - 2]
        sums.append(sum(near))
    return (min(sums) / ((n - 2 * f - 1) * math.sqrt(d))
            + max(dist(r, [0.0] * d) for r in rows) / math.sqrt(d))


class _RuleWithoutGeometry:
    """Krum through select() only: the attack must run it on the assembled input."""

    def __init__(self, f):
        self.f, self.selects_rows, self.calls = f, True, 0

    def select(self, x):
        self.calls += 1
        return G.aggregate("krum", x, self.f)

    def __call__(self, x):
        return self.select(x).value


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("h,f", [(9, 3), (14, 5), (20, 2)])
def test_krum_lambda_is_the_first_selected_halving_of_the_bound(seed, h, f):
    x = honest_rows(h=h, d=25, seed=seed)
    n = h + f
    attack = A.get("fang-krum")
    rows = attack(honest=x, f=f, rule=G.bind("krum", f))
    lam, bound = attack.last_lambda, reference_bound(x, n, f)
    k = round(math.log2(bound / lam))
    assert lam == pytest.approx(bound / 2 ** k, rel=1e-9)
    s = torch.sign(x.mean(dim=0))
    torch.testing.assert_close(rows, (-lam * s).expand(f, -1))
    chosen = G.aggregate("krum", torch.cat([x, rows]), f).selected
    assert attack.last_selected == bool((chosen >= h).any())
    if attack.last_selected and k > 0:  # the previous, twice larger lambda was not selected
        before = (-2 * lam * s).expand(f, -1)
        assert int(G.aggregate("krum", torch.cat([x, before]), f).selected[0]) < h
    # the same lambda when the rule is run on the assembled input instead of its geometry
    plain = _RuleWithoutGeometry(f)
    other = A.get("fang-krum")
    torch.testing.assert_close(other(honest=x, f=f, rule=plain), rows)
    assert plain.calls == k + 1


def test_krum_attack_is_selected_on_a_typical_round():
    x = honest_rows(h=20, d=2000, seed=7)
    attack = A.get("fang-krum")
    rows = attack(honest=x, f=6, rule=G.bind("krum", 6))
    assert attack.last_selected
    agg = G.get("krum")(torch.cat([x, rows]), 6)
    assert float(agg @ x.mean(dim=0)) < 0  # Krum now moves against the honest direction


def test_krum_oracles_and_checks():
    x = honest_rows(h=9)
    with pytest.raises(ValueError, match=r"does not select rows.*oracle='krum'"):
        A.get("fang-krum")(honest=x, f=3, rule=G.bind("median", 3))
    via_krum = A.get("fang-krum", oracle="krum")(honest=x, f=3, rule=G.bind("median", 3))
    torch.testing.assert_close(via_krum, A.get("fang-krum")(honest=x, f=3,
                                                            rule=G.bind("krum", 3)))
    with pytest.raises(ValueError, match="needs rule="):
        A.get("fang-krum")(honest=x, f=3)
    with pytest.raises(ValueError, match=r"needs n > 2f \+ 1, got n=6, f=3"):
        A.get("fang-krum", oracle="krum")(honest=x[:3], f=3)
    with pytest.raises(ValueError, match="oracle must be one of 'rule', 'krum'"):
        A.get("fang-krum", oracle="median")
    with pytest.raises(ValueError, match="lambda_min must be a float"):
        A.get("fang-krum", lambda_min=0.0)
    with pytest.raises(ValueError, match="needs honest="):
        A.get("fang-krum")(own=x[:3], f=3, n=12, rule=G.bind("krum", 3))


def test_krum_hostile_rows_and_determinism():
    x = honest_rows(h=12, d=40)
    bad = x.clone()
    bad[4] = float("inf")
    rule = G.bind("multi-krum", 3)
    got = A.get("fang-krum")(honest=bad, f=3, rule=rule)
    assert bool(torch.isfinite(got).all())
    again = A.get("fang-krum")(honest=bad, f=3, rule=rule)
    assert torch.equal(got, again)
