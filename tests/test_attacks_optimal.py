"""Optimal ALIE and IPM: the line search on known functions and its budget, a closed-form
worked example (the mean), agreement with a brute-force grid against Krum and the median,
a rule given as a plain callable with its own pre-aggregation, hostile rows and checks."""

from __future__ import annotations

import math

import pytest
import torch

from byzsgd import aggregators as G
from byzsgd import attacks as A
from byzsgd.attacks.optimal import line_search


def honest_rows(h=12, d=30, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((h, d), generator=g, dtype=torch.float64) * 0.5 + 0.3).to(dtype)


class Counting:
    """A rule as a plain callable: clip every row to norm ``tau`` (a pre-aggregation), then
    the coordinate-wise median; counts calls and checks what it is given."""

    def __init__(self, honest, f, tau=2.0):
        self.honest, self.f, self.tau, self.calls = honest, f, tau, 0

    def __call__(self, x):
        self.calls += 1
        assert x.shape == (self.honest.shape[0] + self.f, self.honest.shape[1])
        assert torch.equal(x[: self.honest.shape[0]], self.honest)
        norms = x.norm(dim=1, keepdim=True)
        clipped = x * torch.clamp(self.tau / norms, max=1.0)
        return clipped.median(dim=0).values


# --- the search ------------------------------------------------------------------------------

@pytest.mark.parametrize("peak", [0.01, 0.3, 1.0, 3.7, 250.0])
def test_line_search_finds_the_peak_of_a_unimodal_function(peak):
    calls = []

    def f(t):
        calls.append(t)
        return -abs(math.log(t / peak)) if t > 0 else -math.inf

    t, _, used = line_search(f, 1.0, 40)
    assert t == pytest.approx(peak, rel=1e-3)
    assert used == len(calls) <= 40 and len(set(calls)) == len(calls)


def test_line_search_approaches_a_cliff_from_below_within_its_budget():
    """The Krum-like objective: grows until the candidate stops being selected, then falls."""
    def f(t):
        return t if t < 0.37 else 0.01

    t, value, used = line_search(f, 1.0, 20)
    assert used <= 20 and t < 0.37 and t > 0.37 * 0.97 and value == t


def test_line_search_nan_is_worst_and_budget_is_exact():
    t, _, used = line_search(lambda t: float("nan") if t > 4 else t, 1.0, 12)
    assert t == pytest.approx(4.0, rel=0.02) and used == 12
    t, _, used = line_search(lambda t: t, 1.0, 2)
    assert (t, used) == (2.0, 2)


# --- the attacks -----------------------------------------------------------------------------

@pytest.mark.parametrize("evals", [5, 20])
def test_ipm_against_the_mean_worked_example(evals):
    """Against the mean the distance is (f/n)(1 + epsilon)|mu|: it grows without bound, so the
    search doubles to its budget: epsilon = 2^(evals - 1)."""
    x = honest_rows()
    attack = A.get("optimal-ipm", evals=evals)
    rows = attack(honest=x, f=4, rule=G.bind("mean", 4))
    eps = 2.0 ** (evals - 1)
    assert attack.last_scale == eps and attack.last_evals == evals
    mu = x.mean(dim=0)
    assert attack.last_objective == pytest.approx(4 / 16 * (1 + eps) * float(mu.norm()))
    torch.testing.assert_close(rows, (-eps * mu).expand(4, -1))


def grid_best(name, x, f, rule, ts):
    """max over ts of |rule([x; B(t) x f]) - mean(x)|, B built from its definition."""
    mu = x.mean(dim=0)
    sigma = x.std(dim=0, unbiased=True)
    best = -1.0
    for t in ts:
        b = mu + t * sigma if name == "optimal-alie" else -t * mu
        agg = rule(torch.cat([x, b.expand(f, -1)]))
        best = max(best, float((agg - mu).norm()))
    return best


@pytest.mark.parametrize("name", ["optimal-alie", "optimal-ipm"])
@pytest.mark.parametrize("rule_name", ["krum", "median", "trimmed-mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_search_reaches_the_grid_optimum(name, rule_name, seed):
    x = honest_rows(h=15, d=40, seed=seed)
    f = 5
    rule = G.bind(rule_name, f)
    attack = A.get(name, evals=30)
    rows = attack(honest=x, f=f, rule=rule)
    reached = float((rule(torch.cat([x, rows])) - x.mean(dim=0)).norm())
    assert reached == pytest.approx(attack.last_objective, rel=1e-9)
    ts = [k * 0.025 for k in range(1, 801)]  # (0, 20]
    best = grid_best(name, x, f, rule, ts)
    assert reached >= 0.95 * best, (reached, best)
    baseline = A.get("alie" if name == "optimal-alie" else "ipm", knowledge="omniscient")(
        honest=x, f=f, n=20)
    assert reached >= float((rule(torch.cat([x, baseline])) - x.mean(dim=0)).norm()) - 1e-12


@pytest.mark.parametrize("name", ["optimal-alie", "optimal-ipm"])
def test_the_rule_is_a_callable_called_at_most_evals_times(name):
    x = honest_rows(h=10, d=20)
    rule = Counting(x, 3)
    attack = A.get(name, evals=9)
    rows = attack(honest=x, f=3, rule=rule)
    assert rule.calls == attack.last_evals <= 9
    assert float((rule(torch.cat([x, rows])) - x.mean(dim=0)).norm()) == pytest.approx(
        attack.last_objective)


def test_forged_in_place_after_the_honest_rows():
    """The simulator's layout: the attack's candidate rows are written in ``out`` (the rows
    after the honest ones), the honest rows never; the result equals a standalone call."""
    x = honest_rows(h=10, d=20)
    want = A.get("optimal-alie")(honest=x, f=3, rule=G.bind("median", 3))
    matrix = torch.empty((13, 20), dtype=torch.float64)
    matrix[:10] = x
    seen = []

    def rule(full):
        seen.append(full.data_ptr())
        return G.get("median")(full, 3)

    got = A.get("optimal-alie")(honest=matrix[:10], f=3, rule=rule, out=matrix[10:])
    assert got.data_ptr() == matrix[10].data_ptr() and set(seen) == {matrix.data_ptr()}
    torch.testing.assert_close(matrix[10:], want)
    assert torch.equal(matrix[:10], x)


@pytest.mark.parametrize("name", ["optimal-alie", "optimal-ipm"])
def test_hostile_rows_checks_and_determinism(name):
    x = honest_rows(h=10, d=20)
    rule = G.bind("median", 3)
    bad = x.clone()
    bad[2, 4] = float("nan")
    keep = torch.tensor([i for i in range(10) if i != 2])
    torch.testing.assert_close(A.get(name)(honest=bad, f=3, rule=rule),
                               A.get(name)(honest=x[keep], f=3, rule=rule))
    assert torch.equal(A.get(name)(honest=x, f=3, rule=rule),
                       A.get(name)(honest=x, f=3, rule=rule))
    with pytest.raises(ValueError, match=rf"{name}: evals must be an int in \[2, inf\)"):
        A.get(name, evals=1)
    with pytest.raises(ValueError, match="start must be a float"):
        A.get(name, start=0.0)
    with pytest.raises(ValueError, match="needs rule="):
        A.get(name)(honest=x, f=3)
    with pytest.raises(ValueError, match="knowledge"):
        A.get(name, knowledge="own")
