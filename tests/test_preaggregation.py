"""Pre-aggregators (NNM, bucketing, clipping, ARC) and the Chain that runs them before a rule:
worked examples from the papers' definitions, float64 loop references, hostile rows,
permutation invariance, parameter checks, config / CLI / server wiring."""

from __future__ import annotations

import math

import pytest
import torch
from hostile_inputs import F32MAX, HOSTILE, gen, honest_and_hostile

from byzsgd import aggregators as A
from byzsgd.aggregators.preaggregation import arc, arc_count, bucketing, clipping, nnm
from byzsgd.cli import build_parser
from byzsgd.config import ConfigError, ExperimentConfig, to_toml
from byzsgd.flags import config_overrides, parse_pre_aggregator

# --- references (float64 loops) ---------------------------------------------------------------

def ref_nnm(x, f):
    x = x.double()
    n = x.shape[0]
    out = torch.empty_like(x)
    for i in range(n):
        dist = [float(((x[i] - x[j]) ** 2).sum()) for j in range(n)]
        near = sorted(range(n), key=lambda j: (dist[j], j))[: n - f]
        out[i] = x[near].mean(dim=0)
    return out


def ref_clip(x, c):
    x = x.double()
    out = x.clone()
    for i in range(x.shape[0]):
        norm = float(x[i].norm())
        if norm > c:
            out[i] = x[i] * (c / norm)
    return out


def ref_arc(x, f):
    x = x.double()
    n = x.shape[0]
    k = math.floor(2 * (f / n) * (n - f))
    norms = [float(r.norm()) for r in x]
    order = sorted(range(n), key=lambda i: (-norms[i], i))
    limit = norms[order[k]]
    out = x.clone()
    for i in order[:k]:
        out[i] = x[i] * (limit / norms[i])
    return out


# --- NNM --------------------------------------------------------------------------------------

def test_nnm_worked_example():
    # n = 4, f = 1: each value -> mean of its 3 nearest (itself included)
    # 0: {0, 1, 3} -> 4/3; 1: {1, 0, 3} -> 4/3; 3: {3, 1, 0} -> 4/3; 10: {10, 3, 1} -> 14/3
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)
    expected = torch.tensor([[4 / 3], [4 / 3], [4 / 3], [14 / 3]], dtype=torch.float64)
    torch.testing.assert_close(nnm(x, 1), expected)


@pytest.mark.parametrize("n,f", [(9, 3), (12, 5), (7, 0)])
def test_nnm_matches_the_loop(n, f):
    x = torch.randn(n, 30, generator=gen(n), dtype=torch.float64)
    torch.testing.assert_close(nnm(x, f), ref_nnm(x, f))
    x32 = x.float() + 100.0  # a common offset: distances from the centered Gram matrix
    torch.testing.assert_close(nnm(x32, f).double(), ref_nnm(x32, f), rtol=1e-5, atol=1e-4)


def test_nnm_refuses_f_at_least_half():
    with pytest.raises(ValueError, match=r"^nnm needs f < n/2, got n=10, f=5$"):
        nnm(torch.zeros(10, 3), 5)


def test_nnm_is_permutation_equivariant():
    x = torch.randn(10, 20, generator=gen(3))
    perm = torch.randperm(10, generator=gen(4))
    torch.testing.assert_close(nnm(x[perm], 3), nnm(x, 3)[perm])


@pytest.mark.parametrize("value", HOSTILE)
def test_nnm_confines_hostile_rows(value):
    n, f = 11, 3
    x = honest_and_hostile(value, n, f)
    out = nnm(x, f)
    honest = x[: n - f].double()
    # each honest row averages n - f honest rows: exactly the reference on the honest rows
    # with f = 0 (there are exactly n - f of them)
    torch.testing.assert_close(out[: n - f].double(), ref_nnm(honest, 0), rtol=1e-5, atol=1e-5)
    value_after = A.bind("krum", f, pre=["nnm"])(x)
    assert torch.isfinite(value_after).all()
    assert (value_after >= honest.min(0).values.float() - 1e-5).all()
    assert (value_after <= honest.max(0).values.float() + 1e-5).all()


# --- bucketing --------------------------------------------------------------------------------

def test_bucketing_worked_example():
    x = torch.tensor([[0.0], [2.0], [4.0], [6.0], [8.0]])
    perm = torch.randperm(5, generator=gen(7))  # Algorithm 1's permutation, same generator
    v = x[perm, 0]
    expected = torch.tensor([[(v[0] + v[1]) / 2], [(v[2] + v[3]) / 2], [v[4]]])
    out = bucketing(x, 1, s=2, generator=gen(7))
    torch.testing.assert_close(out, expected)  # s does not divide n: last bucket of 1


def test_bucketing_matches_the_loop_and_is_seeded():
    x = torch.randn(13, 9, generator=gen(1), dtype=torch.float64)
    out = bucketing(x, 2, s=3, generator=gen(5))
    perm = torch.randperm(13, generator=gen(5)).tolist()
    ref = [x[perm[i:i + 3]].mean(dim=0) for i in range(0, 13, 3)]
    torch.testing.assert_close(out, torch.stack(ref))
    assert out.shape == (5, 9)
    assert torch.equal(out, bucketing(x, 2, s=3, generator=gen(5)))
    assert not torch.equal(out, bucketing(x, 2, s=3, generator=gen(6)))


@pytest.mark.parametrize("value", HOSTILE)
def test_bucketing_confines_hostile_rows(value):
    n, f, s = 11, 2, 2
    x = honest_and_hostile(value, n, f)
    out = bucketing(x, f, s=s, generator=gen(2))
    groups = list(torch.split(torch.randperm(n, generator=gen(2)), s))
    for b, rows in enumerate(groups):
        if (rows < n - f).all():  # an honest bucket is the mean of its rows, untouched
            torch.testing.assert_close(out[b], x[rows].mean(dim=0))
        elif value == F32MAX or value == 1e20:
            assert torch.isfinite(out[b]).all()  # averaged, not summed then divided


def test_bucketing_parameters():
    with pytest.raises(ValueError, match=r"^bucketing needs 1 <= s <= n \(bucket size\), "
                                         r"got n=5, f=1, s=6$"):
        bucketing(torch.zeros(5, 2), 1, s=6)
    with pytest.raises(ValueError, match="s=0"):
        bucketing(torch.zeros(5, 2), 1, s=0)
    with pytest.raises(TypeError, match="s must be an int"):
        bucketing(torch.zeros(5, 2), 1, s=2.0)


# --- clipping and ARC -------------------------------------------------------------------------

def test_clipping_worked_example():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    torch.testing.assert_close(clipping(x, c=1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    y = torch.randn(8, 5, generator=gen(0), dtype=torch.float64) * 3
    torch.testing.assert_close(clipping(y, c=2.0), ref_clip(y, 2.0))
    with pytest.raises(ValueError, match=r"^clipping needs a norm 0 < c < inf, got c=0$"):
        clipping(x, c=0)


def test_arc_worked_example():
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0], [10.0]])
    # n = 5, f = 1: floor(2 * 1/5 * 4) = 1 vector clipped, 10 -> the next norm, 4
    torch.testing.assert_close(arc(x, 1), torch.tensor([[1.0], [2.0], [3.0], [4.0], [4.0]]))
    # f = 2: floor(2 * 2/5 * 3) = 2 clipped (10 and 4) to the next norm, 3
    assert arc_count(5, 2) == 2
    torch.testing.assert_close(arc(x, 2), torch.tensor([[1.0], [2.0], [3.0], [3.0], [3.0]]))
    y = torch.randn(12, 7, generator=gen(3), dtype=torch.float64)
    torch.testing.assert_close(arc(y, 4), ref_arc(y, 4))
    with pytest.raises(ValueError, match=r"^arc needs f < n/2, got n=6, f=3$"):
        arc(y[:6], 3)


@pytest.mark.parametrize("value", HOSTILE)
def test_clipping_rules_confine_hostile_rows(value):
    n, f = 11, 3
    x = honest_and_hostile(value, n, f)
    before = x.clone()
    honest_max = float(x[: n - f].double().norm(dim=1).max())
    for out in (clipping(x, c=1.5), arc(x, f)):
        assert torch.isfinite(out).all()
        norms = out.double().norm(dim=1)
        assert float(norms.max()) <= max(honest_max, 1.5) * (1 + 1e-5)
    assert torch.equal(torch.nan_to_num(x), torch.nan_to_num(before))  # input untouched


def test_clipping_rules_are_permutation_equivariant():
    x = torch.randn(9, 6, generator=gen(8))
    perm = torch.randperm(9, generator=gen(9))
    torch.testing.assert_close(arc(x[perm], 2), arc(x, 2)[perm])
    torch.testing.assert_close(clipping(x[perm], c=1.0), clipping(x, c=1.0)[perm])


# --- the chain --------------------------------------------------------------------------------

def test_chain_composes_the_stages_then_the_rule():
    x = torch.randn(25, 12, generator=gen(0))
    rule = A.bind("median", 5, pre=["nnm", ("bucketing", {"s": 2})])
    g = rule.generator(1)  # stage 1 (bucketing) of round 0
    manual = A.median(bucketing(nnm(x, 5), 5, s=2, generator=g), 5)
    assert torch.equal(rule(x), manual)
    assert rule.select(x).selected is None and not rule.selects_rows
    rule.commit(manual)  # next round: another permutation
    assert not torch.equal(rule(x), manual)


def test_chain_maps_selected_rows_back_through_clipping():
    x = torch.randn(11, 6, generator=gen(1))
    x[10] *= 100.0
    rule = A.bind("krum", 2, pre=["arc"])
    assert rule.selects_rows
    result = rule.select(x)
    assert torch.equal(result.selected, A.aggregate("krum", arc(x, 2), 2).selected)
    assert isinstance(A.bind("krum", 2), A.BoundRule)  # no chain: the plain bound rule


def test_chain_checks_every_stage_and_the_rule_on_its_rows():
    A.bind("krum", 5, pre=[{"bucketing": {"s": 2}}]).check(25)  # 13 buckets, 13 >= 2*5 + 3
    with pytest.raises(ValueError, match=r"^after bucketing\(s=2\) the rule sees n'=26 rows of "
                                         r"which up to f=12 may hold a Byzantine vector: krum "
                                         r"needs n >= 2f \+ 3, got n=26, f=12$"):
        A.bind("krum", 12, pre=[("bucketing", {"s": 2})]).check(51)
    with pytest.raises(ValueError, match="nnm needs f < n/2"):
        A.bind("median", 5, pre=["nnm"]).check(10)
    with pytest.raises(ValueError, match="unknown pre-aggregator 'nmm'; known pre-aggregators: "
                                         "nnm, bucketing, clipping, arc"):
        A.bind("krum", 1, pre=["nmm"])
    with pytest.raises(ValueError, match=r"bucketing: unknown parameter\(s\) k; "
                                         r"bucketing accepts: s"):
        A.bind("krum", 1, pre=[("bucketing", {"k": 2})])


def test_config_and_cli_take_pre_aggregators():
    assert parse_pre_aggregator("nnm") == "nnm"
    assert parse_pre_aggregator("bucketing:s=2") == {"bucketing": {"s": 2}}
    base = dict(dataset="synthetic", model="logreg", workers=11, byzantine=2, aggregator="krum")
    cfg = ExperimentConfig(**base, pre_aggregators=["nnm", {"bucketing": {"s": 2}}])
    with pytest.raises(ConfigError, match=r"^pre_aggregators: after nnm -> bucketing\(s=2\) "
                                          r"the rule sees n'=6 rows"):
        cfg.validate()
    ExperimentConfig(**base, pre_aggregators=["nnm", "arc"]).validate()
    with pytest.raises(ConfigError, match="unknown pre-aggregator"):
        ExperimentConfig(**base, pre_aggregators=["bogus"]).validate()
    args = build_parser().parse_args(["run", "--aggregator", "krum", "--pre-aggregator", "nnm",
                                      "--pre-aggregator", "bucketing:s=2"])
    assert config_overrides(args)["pre_aggregators"] == ["nnm", {"bucketing": {"s": 2}}]


def test_pre_aggregators_survive_the_written_config(tmp_path):
    cfg = ExperimentConfig(dataset="synthetic", model="logreg", workers=25, byzantine=5,
                           aggregator="krum", pre_aggregators=["nnm", {"bucketing": {"s": 2}}])
    (tmp_path / "c.toml").write_text(to_toml(cfg.to_dict()))
    assert ExperimentConfig.from_toml(tmp_path / "c.toml") == cfg
