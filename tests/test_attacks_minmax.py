"""Min-Max and Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): the paper's worked geometry, the
gamma of Algorithm 1 against a brute-force grid over a plain float64 loop, knowledge,
hostile rows and parameter checks."""

from __future__ import annotations

import math

import pytest
import torch

from byzsgd import attacks as A
from byzsgd.attacks.minmax import gamma_search


def benign(h=7, d=12, seed=0, scale=0.1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn((h, d), generator=g, dtype=torch.float64) + 0.4) * scale).to(dtype)


def reference_p(kind, x):
    """The perturbation, by its definition (float64)."""
    x = x.double()
    mean = x.mean(dim=0)
    if kind == "unit-vec":
        return -mean / mean.norm()
    if kind == "sign":
        return -torch.sign(mean)
    return -x.std(dim=0, unbiased=True)


def reference_bound(name, x):
    """The right-hand side of eq. 6 (min-max) or eq. 7 (min-sum), by plain loops."""
    rows = x.double().tolist()

    def sq(u, v):
        return sum((ui - vi) ** 2 for ui, vi in zip(u, v, strict=True))

    if name == "min-max":
        return max(sq(xi, xj) for xi in rows for xj in rows)
    return max(sum(sq(xi, xj) for xj in rows) for xi in rows)


def feasible(name, x, b, bound=None):
    """Whether b satisfies eq. 6 or eq. 7: direct differences in float64 (no Gram matrix)."""
    bound = reference_bound(name, x) if bound is None else bound
    sq = (x.double() - b.double()).square().sum(dim=1)
    return float(sq.max() if name == "min-max" else sq.sum()) <= bound


def test_worked_example_square():
    """Benign vectors at the corners of the square [0, 2]^2: mean (1, 1), the largest
    pairwise distance the diagonal, sqrt(8). With p = -(1, 1)/sqrt(2), B(gamma) moves along
    the diagonal toward (0, 0); its distance to (2, 2) is sqrt(2) (1 + gamma/sqrt(2)), which
    reaches sqrt(8) at gamma = sqrt(2) (B = (0, 0)). The sum of squared distances is
    8 + 4 gamma^2 against a benign maximum of 16: also gamma = sqrt(2). With p = -sign: B =
    (1 - gamma)(1, 1), gamma = 1 for both."""
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    for name in ("min-max", "min-sum"):
        for kind, gamma in (("unit-vec", math.sqrt(2.0)), ("sign", 1.0)):
            attack = A.get(name, perturbation=kind)
            rows = attack(honest=x, f=3)
            assert attack.last_gamma == pytest.approx(gamma, abs=3e-5)
            want = torch.tensor([1.0, 1.0], dtype=torch.float64) * (
                1 - gamma / math.sqrt(2.0) if kind == "unit-vec" else 1 - gamma)
            torch.testing.assert_close(rows, want.expand(3, 2), atol=3e-5, rtol=0)


@pytest.mark.parametrize("name", ["min-max", "min-sum"])
@pytest.mark.parametrize("kind", ["unit-vec", "sign", "std"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gamma_is_the_largest_feasible_on_a_fine_grid(name, kind, seed):
    x = benign(seed=seed)
    attack = A.get(name, perturbation=kind, gamma_init=2.0)
    rows = attack(honest=x, f=2)
    gamma = attack.last_gamma
    mean, p = x.mean(dim=0), reference_p(kind, x)
    step = 4.0 / 4000
    bound = reference_bound(name, x)
    grid = [k * step for k in range(4001)]
    ok = [g for g in grid if feasible(name, x, mean + g * p, bound)]
    assert ok, "gamma = 0 (the mean) is always feasible"
    assert ok[-1] < 4.0 - step  # the boundary lies inside the searched (0, 2 gamma_init)
    assert abs(gamma - ok[-1]) <= step + 1e-5
    assert feasible(name, x, mean + gamma * p)
    assert not feasible(name, x, mean + (gamma + step + 1e-5) * p)
    torch.testing.assert_close(rows, (mean + gamma * p).expand(2, -1))


def test_search_stops_at_twice_gamma_init():
    """Algorithm 1 explores (0, 2 gamma_init): a boundary beyond it is not reached."""
    x = benign(scale=10.0)
    attack = A.get("min-max", gamma_init=1.0)
    attack(honest=x, f=1)
    assert 2.0 - 1e-4 < attack.last_gamma < 2.0
    assert gamma_search(lambda g: g <= 0.3, 1.0, 1e-6) == pytest.approx(0.3, abs=2e-6)
    assert gamma_search(lambda g: False, 1.0, 1e-6) == 0.0


def test_own_knowledge_reads_only_own_rows():
    x, own = benign(h=9), benign(h=3, seed=5)
    attack = A.get("min-sum", knowledge="own")
    got = attack(honest=x, own=own, f=3)
    want = A.get("min-sum")(honest=own, f=3)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, A.get("min-sum")(honest=x, f=3))


@pytest.mark.parametrize("name", ["min-max", "min-sum"])
def test_float32_agrees_with_float64(name):
    x = benign(h=20, d=5000)
    r64 = A.get(name, perturbation="std")(honest=x, f=4)
    r32 = A.get(name, perturbation="std")(honest=x.float(), f=4)
    assert r32.dtype == torch.float32
    torch.testing.assert_close(r32.double(), r64, atol=1e-5, rtol=1e-4)


def test_a_large_common_component_does_not_cancel():
    """Rows sharing an offset of 1e4 (float32 spacing 1e-3) with a spread of 1e-2: the
    centred products keep the distances, and gamma matches that of the offset-free rows."""
    x = benign(h=10, d=2000, scale=1e-2)
    shifted = (x + 1e4).float()
    a = A.get("min-max", perturbation="sign")
    a(honest=x, f=2)
    b = A.get("min-max", perturbation="sign")
    b(honest=shifted, f=2)
    assert b.last_gamma == pytest.approx(a.last_gamma, rel=0.05)


@pytest.mark.parametrize("name", ["min-max", "min-sum"])
def test_hostile_rows_are_ignored(name):
    x = benign(h=8)
    bad = x.clone()
    bad[3, 5] = float("nan")
    bad[6, 0] = float("inf")
    keep = torch.tensor([0, 1, 2, 4, 5, 7])
    torch.testing.assert_close(A.get(name)(honest=bad, f=2, n=10),
                               A.get(name)(honest=x[keep], f=2))
    with pytest.raises(ValueError, match="at least one benign row with only finite"):
        A.get(name)(honest=torch.full((3, 4), float("nan")), f=1)


def test_deterministic_and_inputs_untouched():
    x = benign()
    x0 = x.clone()
    a = A.get("min-max", perturbation="std")(honest=x, f=3)
    b = A.get("min-max", perturbation="std")(honest=x, f=3)
    assert torch.equal(a, b) and torch.equal(x, x0)


def test_parameter_checks():
    with pytest.raises(ValueError, match=r"min-max: perturbation must be one of 'unit-vec', "
                                         r"'sign', 'std', got 'gauss'"):
        A.get("min-max", perturbation="gauss")
    with pytest.raises(ValueError, match=r"min-sum: gamma_init must be a float in \(0, inf\)"):
        A.get("min-sum", gamma_init=0)
    with pytest.raises(ValueError, match="tau must be a float"):
        A.get("min-sum", tau=-1.0)
    with pytest.raises(ValueError, match="tau must be < gamma_init"):
        A.get("min-max", gamma_init=1.0, tau=2.0)
    with pytest.raises(ValueError, match="gamma_init must be a float"):
        A.get("min-max", gamma_init=float("inf"))
    with pytest.raises(ValueError, match="needs own="):
        A.get("min-max", knowledge="own")(honest=benign(), f=2)
