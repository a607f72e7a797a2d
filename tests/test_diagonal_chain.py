"""Clipping and ARC as factors (issue 14): ``clipping_factors`` / ``arc_factors`` against float64
references, ``out=`` into a warm buffer, the order-statistic kernels scaling rows as they copy
them in, and chains that hand the factors to the rule (``fuse=True``, the default) against
chains that write every stage (``fuse=False``) and against float64 references: bit for bit
where the arithmetic is the same, the mean within float32 rounding; hostile rows (NaN, inf,
1e20, float32 max, copies) in every path; permutation invariance; the workspace reused."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
import torch
from hostile_inputs import F32MAX, HOSTILE, gen, honest_and_hostile

from byzsgd import aggregators as A
from byzsgd import kernels
from byzsgd.aggregators import _diagonal
from byzsgd.aggregators._norms import TINY, plain_factors, scaled_rows
from byzsgd.aggregators._orderstats import (
    coordinate_mean_around_median,
    coordinate_median,
    coordinate_trimmed_mean,
)
from byzsgd.aggregators.preaggregation import (
    arc,
    arc_count,
    arc_factors,
    clipping,
    clipping_factors,
)
from byzsgd.kernels.memory import Workspace

#: Rules the chain feeds lazily (no (n, d) write) and rules it feeds a workspace.
LAZY = ["mean", "median", "trimmed-mean", "meamed"]
WRITTEN = ["krum", "multi-krum", "medoid", "bulyan", "geomed", "centered-clipping"]
#: The fused mean is a weighted sum in float32 (another order than (s x).mean(0)).
MEAN_TOL = {"rtol": 1e-5, "atol": 1e-6}


def ref_factors_clip(x, c):
    out = []
    for row in x.double():
        norm = float(row.norm())
        out.append(1.0 if norm <= c else c / norm)
    return torch.tensor(out, dtype=torch.float64)


def ref_factors_arc(x, f):
    n = x.shape[0]
    k = (2 * f * (n - f)) // n
    norms = [float(r.norm()) for r in x.double()]
    order = sorted(range(n), key=lambda i: (-norms[i], i))
    out = torch.ones(n, dtype=torch.float64)
    for i in order[:k]:
        out[i] = norms[order[k]] / norms[i]
    return out


def pre_of(name):
    return [("clipping", {"c": 2.0})] if name == "clipping" else ["arc"]


def chains(rule, f, pre):
    return A.bind(rule, f, pre=pre), A.bind(rule, f, pre=pre, fuse=False)


def same(a, b, rule):
    if rule == "mean":
        torch.testing.assert_close(a, b, **MEAN_TOL)
    else:
        assert torch.equal(a, b), (rule, (a - b).abs().max())


# --- the factors --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factors_match_float64_references(dtype):
    x = (torch.randn(13, 40, generator=gen(1), dtype=torch.float64) * 3).to(dtype)
    torch.testing.assert_close(clipping_factors(x, c=4.0), ref_factors_clip(x, 4.0))
    torch.testing.assert_close(arc_factors(x, 4), ref_factors_arc(x, 4))
    assert arc_count(13, 4) == 5 and int((arc_factors(x, 4) < 1).sum()) == 5
    assert torch.equal(arc_factors(x, 0), torch.ones(13, dtype=torch.float64))
    # the public rules are exactly x_i * s_i
    assert torch.equal(clipping(x, c=4.0), scaled_rows(x, clipping_factors(x, c=4.0)))
    assert torch.equal(arc(x, 4), scaled_rows(x, arc_factors(x, 4)))
    with pytest.raises(ValueError, match=r"^clipping needs a norm 0 < c < inf, got c=-1$"):
        clipping_factors(x, c=-1)
    with pytest.raises(ValueError, match=r"^arc needs f < n/2, got n=13, f=7$"):
        arc_factors(x, 7)


def test_out_writes_the_same_floats_into_a_warm_buffer():
    x = torch.randn(9, 300, generator=gen(2)) * 5
    buf = torch.full_like(x, float("nan"))
    got = clipping(x, c=3.0, out=buf)
    assert got is buf and torch.equal(buf, clipping(x, c=3.0))
    assert arc(x, 2, out=buf) is buf and torch.equal(buf, arc(x, 2))
    assert arc(x[:2], 0, out=buf[:2]) is not x and torch.equal(buf[:2], x[:2])
    with pytest.raises(ValueError, match=r"^out must be a torch.float32 tensor of shape "
                                         r"\(9, 300\) on cpu, got torch.float64 \(9, 300\)"):
        clipping(x, c=1.0, out=x.double())


@pytest.mark.parametrize("value", HOSTILE)
def test_factors_of_hostile_rows_are_written_out_not_applied_lazily(value):
    n, f = 11, 3
    x = honest_and_hostile(value, n, f, d=64)
    for s in (clipping_factors(x, c=1.5), arc_factors(x, f)):
        hostile = s[n - f:]
        if value != value or abs(value) == float("inf"):
            assert torch.equal(hostile, torch.zeros(f, dtype=torch.float64))  # 0, not 0 * inf
        elif value == F32MAX:
            assert bool((hostile < TINY).all())  # float32 cannot hold them: float64 rows
        assert not plain_factors(s) or value == 1e20
        out = scaled_rows(x, s)
        assert torch.isfinite(out).all()


# --- the order-statistic kernels with factors --------------------------------------------------

@pytest.mark.parametrize("impl", ["compiled", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orderstats_scale_rows_as_they_copy_them_in(impl, dtype):
    n, d = 21, 2500  # three 8-row groups in registers (two full), a partial block of columns
    x = torch.randn(n, d, generator=gen(3), dtype=dtype)
    x[4, 7] = float("nan")  # read as +inf, scaled or not
    s = torch.rand(n, generator=gen(4), dtype=torch.float64) + 1e-3
    y = scaled_rows(x, s)
    rows = torch.tensor([0, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 17, 19, 20])
    with kernels.use(impl):
        for r in (None, rows):
            assert torch.equal(coordinate_median(x, r, scales=s), coordinate_median(y, r))
            assert torch.equal(coordinate_trimmed_mean(x, 4, r, scales=s),
                               coordinate_trimmed_mean(y, 4, r))
            assert torch.equal(coordinate_mean_around_median(x, 9, r, scales=s),
                               coordinate_mean_around_median(y, 9, r))
    # factors of 1 are exact: the plain kernel's floats
    ones = torch.ones(n, dtype=torch.float64)
    assert torch.equal(coordinate_median(x, scales=ones), coordinate_median(x))


def test_scaled_mean_against_float64():
    x = torch.randn(51, 3000, generator=gen(5))
    s = torch.rand(51, generator=gen(6), dtype=torch.float64)
    want = (x.double() * s[:, None]).mean(0)
    torch.testing.assert_close(_diagonal.scaled_mean(x, s).double(), want, rtol=1e-5, atol=1e-6)


# --- chains: fused against written, against float64 --------------------------------------------

@pytest.mark.parametrize("stage", ["clipping", "arc"])
@pytest.mark.parametrize("rule", LAZY + WRITTEN)
def test_fused_chain_equals_the_written_chain(stage, rule):
    n, f = 19, 4
    x = torch.randn(n, 700, generator=gen(7)) * torch.linspace(0.5, 3, n)[:, None]
    x[17:] = x[3] * 40.0  # copies, far out (ARC and clipping both clip them)
    fused, written = chains(rule, f, pre_of(stage))
    a, b = fused.select(x), written.select(x)
    same(a.value, b.value, rule)
    assert (a.selected is None) == (b.selected is None)
    if a.selected is not None:
        assert torch.equal(a.selected, b.selected)
    # the written chain is the public functions composed, as before
    staged = clipping(x, c=2.0) if stage == "clipping" else arc(x, f)
    params = {"tau": 1.0} if rule == "centered-clipping" else {}
    want = A.aggregate(rule, staged, f, **params).value if rule != "centered-clipping" else None
    if want is not None:
        assert torch.equal(b.value, want)


@pytest.mark.parametrize("rule", LAZY)
def test_fused_chain_checks_the_rules_precondition(rule):
    """The lazily fed rules bypass the rule's own function, which checks n against f: the
    fused chain refuses what the written one refuses, with the same message. (After ARC the
    question does not arise: ARC's f < n/2 is these rules' n >= 2f + 1.)"""
    n, f = 8, 4  # n < 2f + 1: median, trimmed mean, meamed refuse
    x = torch.randn(n, 50, generator=gen(3)) * 10.0  # every row clipped: factors != 1
    fused, written = chains(rule, f, pre_of("clipping"))
    try:
        want = written.select(x).value
    except ValueError as e:
        with pytest.raises(ValueError, match=re.escape(str(e))):
            fused.select(x)
    else:
        assert rule == "mean"  # the mean has no precondition on n
        same(fused.select(x).value, want, rule)


@pytest.mark.parametrize("rule", LAZY)
def test_lazy_rules_match_float64_references(rule):
    n, f = 15, 3
    x = torch.randn(n, 500, generator=gen(8)) * 4
    fused = A.bind(rule, f, pre=["arc"])
    ref = arc(x.double(), f)
    torch.testing.assert_close(fused(x).double(), A.aggregate(rule, ref, f).value,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [*HOSTILE, "copies"])
@pytest.mark.parametrize("stage", ["clipping", "arc"])
@pytest.mark.parametrize("rule", ["mean", "median", "trimmed-mean", "krum", "multi-krum"])
def test_hostile_rows_in_every_path(value, stage, rule):
    n, f = 13, 3
    if value == "copies":
        x = torch.randn(n, 64, generator=gen(9))
        x[n - f:] = x[0] * 1e6
    else:
        x = honest_and_hostile(value, n, f, d=64)
    before = x.clone()
    fused, written = chains(rule, f, pre_of(stage))
    a, b = fused(x), written(x)
    assert torch.isfinite(a).all()
    same(a, b, rule)
    assert torch.equal(torch.nan_to_num(x), torch.nan_to_num(before))  # input untouched
    # bounded: no output beyond the honest rows' norm (ARC) or c (clipping)
    bound = 2.0 if stage == "clipping" else float(before[: n - f].double().norm(dim=1).max())
    assert float(a.double().norm()) <= bound * (1 + 1e-5)


@pytest.mark.parametrize("rule", [*LAZY, "krum"])
def test_fused_chain_is_permutation_invariant(rule):
    n, f = 17, 4
    x = torch.randn(n, 300, generator=gen(10)) * torch.linspace(1, 5, n)[:, None]
    perm = torch.randperm(n, generator=gen(11))
    for stage in ("clipping", "arc"):
        rule_ = A.bind(rule, f, pre=pre_of(stage))
        same(rule_(x[perm]), rule_(x), rule)


# --- the workspace ------------------------------------------------------------------------------

def test_workspace_is_reused_and_never_handed_out():
    n, f = 15, 3
    x1 = torch.randn(n, 400, generator=gen(12)) * 3
    x2 = torch.randn(n, 400, generator=gen(13)) * 3
    rule = A.bind("krum", f, pre=["arc"])
    v1 = rule(x1)
    first = rule.workspace._buffer
    assert first is not None and not rule.workspace.holds(v1)
    kept = v1.clone()
    v2 = rule(x2)
    assert rule.workspace._buffer is first  # same memory, round after round
    assert torch.equal(v1, kept) and not torch.equal(v1, v2)  # round 1's value untouched
    # smaller inputs (a server's shards) reuse it; copies and pickles start empty
    rule(x1[:, :100].contiguous())
    assert rule.workspace._buffer is first
    assert copy.deepcopy(rule.workspace)._buffer is None
    assert pickle.loads(pickle.dumps(rule.workspace))._buffer is None
    # a lazily fed rule never writes it
    lazy = A.bind("median", f, pre=["arc"])
    lazy(x1)
    assert lazy.workspace._buffer is None


def test_workspace_get_views_one_buffer():
    ws = Workspace()
    a = ws.get((3, 4), torch.float32)
    b = ws.get((2, 5), torch.float32)
    assert ws.holds(a) and ws.holds(b) and a.data_ptr() == b.data_ptr()
    c = ws.get((3, 4), torch.float64)  # another dtype: a new buffer
    assert ws.holds(c) and not ws.holds(a)
    assert not ws.holds(torch.zeros(3))


def test_two_diagonal_stages_and_stages_after_them():
    n, f = 21, 4
    x = torch.randn(n, 200, generator=gen(14)) * torch.linspace(1, 4, n)[:, None]
    for pre in (["arc", ("clipping", {"c": 5.0})], [("clipping", {"c": 5.0}), "nnm"],
                ["nnm", "arc"], [("bucketing", {"s": 2}), "arc"]):
        for rule in ("median", "krum", "mean"):
            if rule == "krum" and ("bucketing", {"s": 2}) in pre:
                continue
            fused, written = chains(rule, f, pre)
            same(fused(x), written(x), rule)


def test_server_shards_through_a_fused_chain():
    from byzsgd.engine.server import Server

    n, f = 13, 3
    x = torch.randn(n, 120, generator=gen(15)) * 3
    for rule in ("krum", "median"):
        fused, written = chains(rule, f, ["arc"])
        got = Server(fused, 120, servers=3).aggregate(x).value
        want = Server(written, 120, servers=3).aggregate(x).value
        assert torch.equal(got, want)


@pytest.mark.parametrize("rule", LAZY)
def test_torch_implementations_take_the_factors_too(rule):
    # the torch kernels (a GPU's) scale the rows first; an explicit impl= is left to the rule
    n, f = 15, 3
    x = torch.randn(n, 300, generator=gen(16)) * torch.linspace(1, 4, n)[:, None]
    written = A.bind(rule, f, pre=["arc"], fuse=False)
    with kernels.use("torch"):
        same(A.bind(rule, f, pre=["arc"])(x), written(x), rule)
    pinned = A.bind(rule, f, pre=["arc"], impl="torch")
    same(pinned(x), written(x), rule)
    assert pinned.workspace._buffer is not None  # written out for the pinned implementation


def test_a_replaced_rule_is_not_fed_factors():
    calls = []

    def my_mean(gradients, f):
        calls.append(gradients.clone())
        return gradients.mean(0)

    x = torch.randn(9, 20, generator=gen(17)) * 3
    rule = A.bind(my_mean, 2, pre=[("clipping", {"c": 1.0})])
    rule(x)
    assert torch.equal(calls[0], clipping(x, c=1.0))  # the user's function saw s x, written
