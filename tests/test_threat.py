"""Threat model: validation, attack window, choice of the Byzantine workers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzsgd import attacks
from byzsgd.threat import ThreatModel


def test_defaults_and_frozen():
    t = ThreatModel(10, 3)
    assert (t.selection, t.knowledge, t.model, t.start_round, t.stop_round) == \
        ("random", None, "classic", 0, None)
    assert t.h == 7
    with pytest.raises(AttributeError):
        t.f = 2  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n": 0, "f": 0}, "n must be >= 1"),
    ({"n": 5, "f": -1}, "0 <= f <= n"),
    ({"n": 5, "f": 6}, "0 <= f <= n"),
    ({"n": 5, "f": 1.0}, "f must be an int"),
    ({"n": 5, "f": 1, "selection": "roundrobin"}, "selection must be one of random, fixed"),
    ({"n": 5, "f": 1, "knowledge": "none"}, "knowledge must be one of own, omniscient"),
    ({"n": 5, "f": 1, "model": "dimensional"}, "model must be one of classic, generalized"),
    ({"n": 5, "f": 1, "start_round": -1}, "start_round must be >= 0"),
    ({"n": 5, "f": 1, "start_round": 4, "stop_round": 3}, "stop_round must be >= start_round"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThreatModel(**kwargs)


def test_active_window():
    t = ThreatModel(10, 2, start_round=3, stop_round=6)
    assert [r for r in range(10) if t.active(r)] == [3, 4, 5]
    assert all(ThreatModel(10, 2, start_round=2).active(r) for r in range(2, 1000, 97))
    assert not ThreatModel(10, 2, start_round=2).active(1)
    assert not any(ThreatModel(10, 2, start_round=4, stop_round=4).active(r) for r in range(9))


def test_fixed_rows():
    t = ThreatModel(10, 3, selection="fixed")
    assert torch.equal(t.byzantine_rows(0), torch.tensor([7, 8, 9]))
    assert torch.equal(t.byzantine_rows(5), torch.tensor([7, 8, 9]))
    assert t.byzantine_rows(0).dtype == torch.long


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.data(), st.integers(0, 2**31))
def test_random_rows(n, draw, seed):
    f = draw.draw(st.integers(0, n))
    t = ThreatModel(n, f)
    rows = t.byzantine_rows(0, torch.Generator().manual_seed(seed))
    assert rows.dtype == torch.long and rows.numel() == f
    assert torch.equal(rows, torch.sort(rows).values)
    assert len(set(rows.tolist())) == f and all(0 <= i < n for i in rows.tolist())
    again = t.byzantine_rows(0, torch.Generator().manual_seed(seed))
    assert torch.equal(rows, again)


def test_random_rows_change_and_cover():
    t = ThreatModel(10, 3)
    gen = torch.Generator().manual_seed(0)
    draws = [tuple(t.byzantine_rows(r, gen).tolist()) for r in range(200)]
    assert len(set(draws)) > 50
    counts = torch.bincount(torch.tensor(draws).flatten(), minlength=10)
    assert int(counts.min()) > 30                               # expected 60 each


def test_no_rows_outside_window_generalized_or_f0():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert ThreatModel(10, 3, start_round=5).byzantine_rows(4, gen).numel() == 0
    assert torch.equal(gen.get_state(), state)                  # nothing drawn
    assert ThreatModel(10, 3, stop_round=5).byzantine_rows(5, gen).numel() == 0
    assert ThreatModel(10, 3, model="generalized").byzantine_rows(0, gen).numel() == 0
    assert ThreatModel(10, 0).byzantine_rows(0, gen).numel() == 0


def test_check_attack():
    ThreatModel(10, 2).check_attack(attacks.get("alie"))
    ThreatModel(10, 2, knowledge="omniscient").check_attack(attacks.get("alie"))
    ThreatModel(10, 2, model="generalized").check_attack(attacks.get("gambler"))
    with pytest.raises(ValueError, match=r"'gambler' is dimensional.*model='generalized'"):
        ThreatModel(10, 2).check_attack(attacks.get("gambler"))
    with pytest.raises(ValueError, match="'ipm' is classic"):
        ThreatModel(10, 2, model="generalized").check_attack(attacks.get("ipm"))
    with pytest.raises(ValueError, match="supports knowledge omniscient"):
        ThreatModel(10, 2, knowledge="own").check_attack(attacks.get("omniscient"))
