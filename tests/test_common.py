"""Checks every registered rule and attack must pass, generated from the registries and the
declared parameter constraints (after scikit-learn's common estimator checks): no rule or
attack name is written here, so a new one is checked by being registered."""

from __future__ import annotations

import inspect
import math
from numbers import Integral

import pytest
import torch

from byzsgd import aggregators, attacks
from byzsgd.aggregators.chain import RANDOM
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.constraints import Interval, Items, Options, is_valid

#: n and f that satisfy every library rule's precondition (Bulyan: n >= 4f + 3).
N, F = 11, 2

RULES = aggregators.names()
ATTACKS = attacks.names()


def _candidates(constraint: object) -> list[object]:
    """Values that a constraint form's boundary suggests: just outside it, and the usual
    wrong types."""
    out: list[object] = ["not-a-number", object(), [], {}, True, False, math.nan, math.inf,
                         -math.inf, 1.5, -1, 0, 10**9, None]
    if isinstance(constraint, Interval):
        integral = constraint.type is Integral
        step = 1 if integral else 1e-9
        if constraint.low is not None and math.isfinite(constraint.low):
            low = constraint.low
            out += [low - step, low - 1, low] + ([low + 0.5, float(low)] if integral else [])
        if constraint.high is not None and math.isfinite(constraint.high):
            high = constraint.high
            out += [high + step, high + 1, high] + ([high - 0.5] if integral else [])
    elif isinstance(constraint, Items):
        out += [[], [object()], *([[v] for v in _candidates(constraint.each)])]
    elif isinstance(constraint, Options):
        out += [str(v) + "x" for v in constraint.values]
    return out


def invalid_values(constraints: list[object]) -> list[object]:
    """The generated values that satisfy none of ``constraints`` (at least one per form)."""
    seen: list[object] = []
    for c in constraints:
        for v in _candidates(c):
            if not is_valid(constraints, v) and not any(v is s for s in seen):
                seen.append(v)
    return seen


def _rule_cases() -> list[tuple[str, str, object]]:
    return [(name, param, value)
            for name in RULES
            for param, accepted in aggregators.spec(name).constraints.items()
            for value in invalid_values(accepted)]


def _attack_cases() -> list[tuple[str, str, object]]:
    return [(name, param, value)
            for name in ATTACKS
            for param, accepted in attacks.spec(name).parameter_constraints().items()
            for value in invalid_values(accepted)]


def test_generated_values_cover_the_usual_mistakes():
    """The generator itself: for an int interval, bool, nan, inf, a float, a string and the
    values just outside are all invalid; for a real interval, nan and bool are."""
    bad = invalid_values([Interval(Integral, 1, 10, closed="both")])
    for v in (True, False, math.nan, math.inf, 1.5, "not-a-number", 0, 11, None):
        assert any(v is b or (v == b and type(v) is type(b)) for b in bad), v
    assert all(not is_valid([Interval(Integral, 1, 10, closed="both")], v) for v in bad)


# --- rules -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RULES)
def test_rule_declares_a_constraint_for_every_parameter(name):
    spec = aggregators.spec(name)
    assert set(spec.constraints) == set(spec.params), name
    assert spec.summary, name
    assert all(d is not inspect.Parameter.empty for d in spec.params.values()), \
        f"{name}: every rule parameter needs a default"


@pytest.mark.parametrize("name", RULES)
def test_rule_defaults_pass_and_run(name):
    spec = aggregators.spec(name)
    aggregators.check(name, N, F, **spec.params)
    x = torch.randn(N, 6, generator=torch.Generator().manual_seed(0))
    result = aggregators.aggregate(name, x, F, **spec.params)
    assert result.value.shape == (6,) and bool(torch.isfinite(result.value).all())
    assert (result.selected is not None) == spec.selects_rows
    bound = aggregators.bind(name, F, **spec.params)
    if name in RANDOM:  # a bound random rule draws from the round's generator, not seed=
        expected = aggregators.aggregate(name, x, F, **{**spec.params,
                                                         "generator": bound.generator(0)})
        assert torch.equal(bound(x), expected.value)
    else:
        assert torch.equal(bound(x), result.value)
    assert torch.equal(aggregators.get(name)(x, F), result.value)


@pytest.mark.parametrize(("name", "param", "value"), _rule_cases())
def test_rule_refuses_invalid_parameter(name, param, value):
    """check (the config's path), bind (the server's) and aggregate (a direct call) all
    refuse the value before computing, naming the rule and the parameter."""
    pattern = rf"{name}: {param} must be"
    with pytest.raises((ValueError, TypeError), match=pattern):
        aggregators.check(name, N, F, **{param: value})
    with pytest.raises((ValueError, TypeError), match=pattern):
        aggregators.bind(name, F, **{param: value})
    with pytest.raises((ValueError, TypeError), match=pattern):
        aggregators.aggregate(name, torch.randn(N, 3), F, **{param: value})


@pytest.mark.parametrize("name", RULES)
def test_rule_refuses_unknown_parameter_and_bad_f(name):
    with pytest.raises(ValueError, match=rf"{name}: unknown parameter\(s\) no_such_param"):
        aggregators.check(name, N, F, no_such_param=1)
    for f in (-1, 1.5, True, "2"):
        with pytest.raises((ValueError, TypeError), match=rf"{name}: f must"):
            aggregators.bind(name, f)


@pytest.mark.parametrize(("name", "param", "value"),
                         [c for c in _rule_cases() if c[2] is not None][::7])
def test_config_refuses_invalid_rule_parameter(name, param, value):
    """Before any round: the configuration refuses it (a sample of the generated cases)."""
    cfg = ExperimentConfig(workers=N, byzantine=F, aggregator=name,
                           aggregator_params={param: value})
    with pytest.raises(ConfigError, match=rf"aggregator: {name}: {param} must be"):
        cfg.validate()


# --- attacks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ATTACKS)
def test_attack_declares_a_constraint_for_every_parameter(name):
    cls = attacks.spec(name)
    assert set(cls.parameter_constraints()) == set(cls.defaults()), name
    assert cls.name == name and cls.summary
    assert cls.supported_knowledge and set(cls.supported_knowledge) <= set(attacks.KNOWLEDGE)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_defaults_pass(name):
    cls = attacks.spec(name)
    defaults = cls.defaults()
    attack = attacks.get(name, **defaults)
    assert attack.knowledge == cls.supported_knowledge[0]
    assert set(attack.params) <= set(defaults)
    assert repr(attack).startswith(cls.__name__)
    for knowledge in cls.supported_knowledge:
        assert attacks.get(name, knowledge=knowledge).knowledge == knowledge


@pytest.mark.parametrize(("name", "param", "value"), _attack_cases())
def test_attack_refuses_invalid_parameter(name, param, value):
    pattern = rf"{name}: {param} must be"
    with pytest.raises((ValueError, TypeError), match=pattern):
        attacks.get(name, **{param: value})
    with pytest.raises((ValueError, TypeError), match=pattern):
        attacks.spec(name)(**{param: value})


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_refuses_unknown_parameter(name):
    with pytest.raises(ValueError, match=rf"{name}: unknown parameter\(s\) no_such_param"):
        attacks.get(name, no_such_param=1)
