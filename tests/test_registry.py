"""The open registries: a user's rule and attack registered from the user's code, name clashes,
the Rule protocol, the front door's structured inputs, and the parameter checks of issue 17
(item 4) refused before any round."""

from __future__ import annotations

import math
import re
from numbers import Integral, Real
from pathlib import Path

import pytest
import torch

from byzsgd import aggregators, attacks
from byzsgd.aggregators import _registry as rule_registry
from byzsgd.attacks import _registry as attack_registry
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.constraints import Interval
from byzsgd.engine.server import Server
from byzsgd.experiment import run

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def clean_registries(monkeypatch):
    """Whatever a test registers is gone after it, including the ``aggregators.<name>``
    functions that registering a rule (or replacing one) writes into the package."""
    monkeypatch.setattr(rule_registry, "_RULES", dict(rule_registry._RULES))
    monkeypatch.setattr(attack_registry, "_ATTACKS", dict(attack_registry._ATTACKS))
    saved = dict(vars(aggregators))
    yield
    for name in set(vars(aggregators)) - set(saved):
        delattr(aggregators, name)
    for name, value in saved.items():
        if getattr(aggregators, name, None) is not value:
            setattr(aggregators, name, value)


def trimmed_norm_mean(gradients, f, *, keep=None):
    """Mean of the rows with the smallest norms (a toy user rule returning a Tensor)."""
    keep = gradients.shape[0] - f if keep is None else keep
    order = torch.argsort(gradients.norm(dim=1))
    return gradients[order[:keep]].mean(dim=0)


def test_a_plain_user_function_registers_and_runs_everywhere():
    keep = [Interval(Integral, 1, None, closed="left"), None]
    aggregators.register("norm-mean", constraints={"keep": keep})(trimmed_norm_mean)
    assert "norm-mean" in aggregators.names()
    spec = aggregators.spec("norm-mean")
    assert spec.summary.startswith("Mean of the rows with the smallest norms")
    assert spec.params == {"keep": None}
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    x[0] = 1e6
    want = trimmed_norm_mean(x, 2)
    assert torch.equal(aggregators.get("norm-mean")(x, 2), want)
    assert torch.equal(aggregators.aggregate("norm-mean", x, 2).value, want)
    assert aggregators.aggregate("norm-mean", x, 2).selected is None
    assert torch.equal(aggregators.norm_mean(x, 2), want)          # module attribute too
    bound = aggregators.bind("norm-mean", 2, keep=3)
    assert isinstance(bound, aggregators.Rule)
    assert torch.equal(bound(x), trimmed_norm_mean(x, 2, keep=3))
    with pytest.raises(ValueError, match=r"norm-mean: keep must be an int in \[1, inf\) or "
                                         r"None, got 2.5"):
        aggregators.bind("norm-mean", 2, keep=2.5)
    server = Server(bound, 4)
    assert torch.equal(server.aggregate(x).value, trimmed_norm_mean(x, 2, keep=3))


def test_an_unregistered_function_binds_and_the_server_takes_it():
    bound = aggregators.bind(trimmed_norm_mean, 2)
    assert bound.name == "trimmed_norm_mean"
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(Server(bound, 4).aggregate(x).value, trimmed_norm_mean(x, 2))
    with pytest.raises(ValueError, match=r"unknown parameter.*keep_all"):
        aggregators.bind(trimmed_norm_mean, 2, keep_all=True)
    with pytest.raises(TypeError, match="Server needs a Rule"):
        Server(trimmed_norm_mean, 4)  # type: ignore[arg-type]


def test_a_registered_user_rule_runs_from_the_config(tmp_path):
    aggregators.register("norm-mean", summary="toy",
                         constraints={"keep": [Interval(Real, 1, None, closed="left"), None]}
                         )(trimmed_norm_mean)
    summary = run(ExperimentConfig(dataset="synthetic", model="logreg", workers=7, byzantine=1,
                                   rounds=4, batch_size=8, eval_every=2, eval_train_samples=100,
                                   aggregator="norm-mean", aggregator_params={"keep": 5},
                                   attack="gaussian"), tmp_path)
    assert summary["status"] == "complete"
    assert 'aggregator = "norm-mean"' in (tmp_path / "config.toml").read_text()
    with pytest.raises(ConfigError, match=r"norm-mean: keep must be a float in \[1, inf\) or "
                                          r"None, got 0"):
        ExperimentConfig(aggregator="norm-mean", aggregator_params={"keep": 0}).validate()


def test_a_selection_rule_is_attacked_by_the_leeway_search():
    """A user rule that reports its selection (no ``selection(geometry)``): the leeway
    attacks run it on the assembled input."""

    @aggregators.register("closest-to-zero", summary="the row of least norm",
                          selects_rows=True)
    def closest(gradients, f):
        best = torch.argmin(gradients.norm(dim=1)).reshape(1)
        return aggregators.Aggregation(gradients[best[0]].clone(), best)

    honest = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    attack = attacks.get("lp-coordinate")  # the mean is the least norm; B leaves it
    rows = attack(honest=honest, f=2, rule=aggregators.bind("closest-to-zero", 2))
    chosen = aggregators.aggregate("closest-to-zero", torch.cat([honest, rows]), 2).selected
    assert int(chosen[0]) >= 8 and attack.last_gamma > 0
    least = float(honest.norm(dim=1).min())        # B is selected while its norm is below
    assert float(rows[0].norm()) == pytest.approx(least, rel=1e-2)


def test_name_clashes_name_both_registrants():
    def krum_again(gradients, f):
        return gradients.mean(dim=0)

    with pytest.raises(ValueError, match=re.escape(
            "aggregation rule 'krum' is already registered by "
            "byzsgd.aggregators.krum.krum_select; test_registry.")) as info:
        aggregators.register("krum")(krum_again)
    assert "krum_again" in str(info.value) and "replace=True" in str(info.value)
    x = torch.randn(7, 3)
    assert not torch.equal(aggregators.get("krum")(x, 1), x.mean(dim=0))
    aggregators.register("krum", replace=True)(krum_again)
    assert torch.equal(aggregators.get("krum")(x, 1), x.mean(dim=0))
    assert torch.equal(aggregators.krum(x, 1), x.mean(dim=0))
    aggregators.register("krum", replace=True)(rule_registry._RULES["krum"].function)
    with pytest.raises(ValueError, match=r"constraints for parameter.*nope"):
        aggregators.register("x", constraints={"nope": [None]})(krum_again)
    with pytest.raises(ValueError, match="rule name"):
        aggregators.register("two words")


class Shift(attacks.ClassicAttack):
    """Every Byzantine row is the honest mean plus ``delta``."""

    name = "shift"
    summary = "mean(honest) + delta"
    supported_knowledge = ("omniscient",)
    constraints = {"delta": [Interval(Real, None, None, closed="neither")]}  # noqa: RUF012

    def __init__(self, *, delta: float = 1.0, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.delta = float(delta)

    def forge(self, ctx):
        return ctx.rows(ctx.need_honest().mean(dim=0) + self.delta)


def test_a_user_attack_registers_and_is_checked():
    assert attacks.register(Shift) is Shift
    assert "shift" in attacks.names() and attacks.describe("shift") == "mean(honest) + delta"
    assert attacks.defaults("shift") == {"delta": 1.0, "knowledge": None}
    honest = torch.zeros(4, 3)
    rows = attacks.get("shift", delta=2.0)(honest=honest, f=1)
    assert torch.equal(rows, torch.full((1, 3), 2.0))
    for bad in (math.nan, math.inf, "1", True):
        with pytest.raises(ValueError, match=r"shift: delta must be a float in \(-inf, inf\)"):
            attacks.get("shift", delta=bad)
    with pytest.raises(ValueError, match="shift: knowledge must be one of 'omniscient'"):
        attacks.get("shift", knowledge="own")
    cfg = ExperimentConfig(attack="shift", attack_params={"delta": math.nan})
    with pytest.raises(ConfigError, match="attack: shift: delta must be"):
        cfg.validate()

    class Other(Shift):
        name = "shift"

    with pytest.raises(ValueError, match=r"attack 'shift' is already registered by "
                                         r"test_registry.Shift; .*Other cannot take the name"):
        attacks.register(Other)
    assert attacks.register(replace=True)(Other) is Other and attacks.spec("shift") is Other

    class Nameless(attacks.ClassicAttack):
        pass

    with pytest.raises(ValueError, match="its own class attribute name"):
        attacks.register(Nameless)

    class NoneAttack(Shift):
        name = "none"

    with pytest.raises(ValueError, match="'none'"):
        attacks.register(NoneAttack)


def test_bound_rule_holds_its_spec():
    bound = aggregators.bind("median", 1)
    rule_registry._RULES.pop("median")                 # later look-ups would fail
    x = torch.randn(5, 3)
    assert torch.equal(bound(x), x.median(dim=0).values)
    assert bound.spec.name == "median" and bound.name == "median"
    with pytest.raises(ValueError, match="unknown aggregation rule 'median'"):
        aggregators.bind("median", 1)


# --- the front door: structured inputs, devices ----------------------------------------------

def test_rules_take_lists_of_tensors_and_of_dicts():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 6, generator=g, dtype=torch.float64)
    for name in ("median", "krum", "bulyan", "geomed"):
        want = aggregators.aggregate(name, x, 2)
        listed = aggregators.aggregate(name, [row.reshape(2, 3) for row in x], 2)
        assert listed.value.shape == (2, 3)
        assert torch.equal(listed.value.reshape(-1), want.value)
        assert (listed.selected is None) == (want.selected is None)
        # dicts: flattened in sorted key order ("a" first, whatever the insertion order)
        dicts = [{"b": row[2:].reshape(4, 1), "a": row[:2]} for row in x]
        out = aggregators.get(name)(dicts, 2)
        assert set(out) == {"a", "b"} and out["b"].shape == (4, 1)
        assert torch.equal(torch.cat([out["a"], out["b"].reshape(-1)]), want.value)
        bound = aggregators.bind(name, 2)
        assert torch.equal(bound(tuple(x)), want.value)
    with pytest.raises(ValueError, match="worker 1 sent"):
        aggregators.get("median")([torch.zeros(3), torch.zeros(4), torch.zeros(3)], 1)
    with pytest.raises(ValueError, match=r"worker 0's keys \['a'\], worker 1 sent \['b'\]"):
        aggregators.get("median")([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}], 0)
    with pytest.raises(TypeError, match=r"worker 1, key 'a': expected a torch\.Tensor"):
        aggregators.get("median")([{"a": torch.zeros(2)}, {"a": [0.0, 0.0]}], 0)
    with pytest.raises(TypeError, match="list of per-worker tensors"):
        aggregators.get("median")("rows", 0)


def test_non_cpu_rows_are_computed_where_they_are_not_moved():
    # issue 13: any device runs the torch kernels there (the meta device has no data, but
    # keeps every shape and device through the computation)
    x = torch.empty(5, 3, device="meta")
    out = aggregators.get("median")(x, 1)
    assert out.device.type == "meta" and out.shape == (3,)
    with pytest.raises(ValueError, match=r"impl='compiled' needs a CPU float32/float64 "
                                         r"tensor, got torch.float32 on meta"):
        aggregators.get("median")(x, 1, impl="compiled")


# --- issue 17, item 4: refused before any round ----------------------------------------------

@pytest.mark.parametrize(("aggregator", "params", "message"), [
    ("meamed", {"keep": 2.5}, r"meamed: keep must be an int in \[1, inf\) or None, got 2.5"),
    ("multi-krum", {"m": 1.5}, r"multi-krum: m must be an int in \[1, inf\) or None, got 1.5"),
    ("geomed", {"max_iter": 2.5}, r"geomed: max_iter must be an int in \[1, inf\), got 2.5"),
    ("geomed", {"max_iter": True}, r"geomed: max_iter must be an int in \[1, inf\), got True"),
    ("krum", {"p": 0}, r"krum: p must be a float in \[1, inf\], got 0"),
    ("krum", {"p": math.nan}, r"krum: p must be a float in \[1, inf\], got nan"),
    ("medoid", {"p": "2"}, r"medoid: p must be a float in \[1, inf\], got '2'"),
    ("bulyan", {"base": "geomed", "max_iter": 0}, r"bulyan: max_iter must be an int in \[1, inf\)"),
    ("bulyan", {"base": "geomed", "tol": -1.0}, r"bulyan: tol must be a float in \(0, inf\)"),
    ("brute", {"max_subsets": False}, r"brute: max_subsets must be an int in \[1, inf\)"),
])
def test_issue17_invalid_rule_parameters_fail_before_training(tmp_path, aggregator, params,
                                                              message):
    config = ExperimentConfig(dataset="synthetic", model="logreg", workers=11, byzantine=2,
                              rounds=2, aggregator=aggregator, aggregator_params=params)
    with pytest.raises(ConfigError, match=message):
        run(config, tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def test_issue17_leeway_attacks_on_half_precision_and_empty_vectors():
    g = torch.Generator().manual_seed(4)
    honest, own = torch.randn(8, 6, generator=g).half(), torch.randn(2, 6, generator=g).half()
    for name in ("lp-coordinate", "linf"):
        for p in (2.0, math.inf):
            attack = attacks.get(name)
            rows = attack(honest=honest, own=own, f=2, rule=aggregators.bind("krum", 2, p=p))
            assert rows.dtype == torch.float16 and rows.shape == (2, 6)
            assert bool(torch.isfinite(rows).all()) and attack.last_gamma > 0
        empty = attacks.get(name)(honest=torch.zeros(8, 0), f=2,
                                  rule=aggregators.bind("krum", 2))
        assert empty.shape == (2, 0)


# --- the README's "Library" example runs ------------------------------------------------------

def test_readme_library_example_runs():
    text = README.read_text()
    section = text[text.index("## Library"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2, "the Library section shows its examples as python blocks"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert "my-clipped-mean" in aggregators.names() and "my-shift" in attacks.names()
