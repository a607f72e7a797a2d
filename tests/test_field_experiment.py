"""The field's rule x attack experiment (``experiments/field-rules-attacks.toml``) expands to the
grid it states, and the generic pieces it uses work end to end: list-valued axes
(``pre_aggregators``), the ``heatmap`` plot kind and the ``matrix`` / ``worst-case`` tables of
``[[reproduce.tables]]``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from byzsgd import aggregators, attacks, reproduce
from byzsgd.config import ConfigError
from byzsgd.grid import fmt, path_token
from byzsgd.results import read_json

EXPERIMENTS = reproduce.repo_root() / "experiments"
FIELD = "field-rules-attacks"

RULES = ["mean", "median", "trimmed-mean", "meamed", "geomed", "rfa", "medoid", "krum",
         "multi-krum", "bulyan", "centered-clipping", "dnc", "signguard", "caf"]
ATTACKS = ["none", "sign-flip", "label-flip", "gaussian", "omniscient", "alie", "optimal-alie",
           "ipm", "optimal-ipm", "mimic", "fang-krum", "fang-trim", "min-max", "min-sum"]


def test_field_experiment_expands_to_the_stated_grid() -> None:
    exp = reproduce.load(FIELD, EXPERIMENTS)
    pts = reproduce.points(exp)
    # 14 rules x {none, nnm, bucketing} less bulyan after bucketing, x 14 attack columns x
    # 2 partitions x 3 seeds
    assert len(pts) == 41 * 14 * 2 * 3 == 3444
    assert len({p.name for p in pts}) == len(pts)
    variants = {(tuple(p.config.pre_aggregators), p.config.aggregator) for p in pts}
    expected = {(pre, r) for pre in [(), ("nnm",), ("bucketing",)] for r in RULES} \
        - {(("bucketing",), "bulyan")}
    assert variants == expected
    assert list(dict.fromkeys(p.config.attack for p in pts)) == ATTACKS
    for p in pts:
        cfg = p.config
        assert (cfg.dataset, cfg.workers, cfg.byzantine, cfg.rule_f) == ("mnist", 25, 5, 5)
        assert cfg.partition in ("iid", "dirichlet") and cfg.partition_alpha == 1.0
        assert cfg.seed in (0, 1, 2)
    per_cell: dict[tuple[object, ...], set[int]] = {}
    for p in pts:
        key = (tuple(p.config.pre_aggregators), p.config.aggregator, p.config.attack,
               p.config.partition)
        per_cell.setdefault(key, set()).add(p.config.seed)
    assert len(per_cell) == 41 * 14 * 2 and all(s == {0, 1, 2} for s in per_cell.values())
    name = ("aggregator=krum__attack=alie__partition=dirichlet__pre_aggregators=nnm__seed=2")
    assert name in {p.name for p in pts}
    # heat-map rows: "krum", "nnm + krum", "bucketing + krum"
    m = reproduce.matrix(pts, {p.name: {"final_test_accuracy": 0.5} for p in pts},
                         dict(exp.info["plot"]))
    assert len(m.rows) == 41 and {"krum", "nnm + krum", "bucketing + krum"} <= set(m.rows)
    assert m.cols == ATTACKS and m.panels == ["partition=iid", "partition=dirichlet"]
    assert m.rows[:3] == ["mean", "nnm + mean", "bucketing + mean"]  # grouped by rule


def test_every_rule_and_attack_is_in_the_grid_or_left_out_with_a_reason() -> None:
    """A rule or attack registered later fails this test until it is added or excluded."""
    info = reproduce.load(FIELD, EXPERIMENTS).info
    left_out = info["left_out"]
    assert all(isinstance(v, str) and len(v) > 20 for v in left_out.values())
    assert set(RULES) | (set(left_out) & set(aggregators.names())) == set(aggregators.names())
    assert set(ATTACKS) - {"none"} | (set(left_out) & set(attacks.names())) == \
        set(attacks.names())
    assert not (set(left_out) & (set(RULES) | set(ATTACKS)))


def test_list_values_in_names_and_rows() -> None:
    assert fmt([]) == path_token([]) == "none"
    assert fmt(["nnm", "bucketing"]) == path_token(["nnm", "bucketing"]) == "nnm+bucketing"
    assert fmt(0.5) == "0.5" and path_token("a/b c") == "a-bc"  # unchanged for scalars


def _matrix(cells: dict[tuple[str, str], tuple[float, float, int]]) -> reproduce.Matrix:
    rows = list(dict.fromkeys(r for r, _ in cells))
    cols = list(dict.fromkeys(c for _, c in cells))
    return reproduce.Matrix("final_test_accuracy", [""], rows, cols,
                            {("", r, c): v for (r, c), v in cells.items()})


def test_worst_case_is_the_least_mean_over_the_attacks() -> None:
    m = _matrix({("krum", "none"): (0.10, 0.0, 3), ("krum", "alie"): (0.50, 0.1, 3),
                 ("krum", "ipm"): (0.40, 0.2, 3), ("krum", "mimic"): (0.40, 0.0, 3),
                 ("median", "none"): (0.90, 0.0, 3), ("median", "alie"): (float("nan"), 0, 0),
                 ("median", "ipm"): (0.80, 0.0, 3)})
    # "none" excluded: krum's worst is 0.40, the tie going to ipm (listed first)
    assert m.worst("", "krum", ["none"]) == ("ipm", (0.40, 0.2, 3))
    assert m.worst("", "krum") == ("none", (0.10, 0.0, 3))
    assert m.worst("", "median", ["none"]) == ("ipm", (0.80, 0.0, 3))  # NaN cells skipped
    assert m.worst("", "median", ["none", "ipm"]) is None
    table = reproduce.worst_case(m, ["none"])
    assert [(e["row"], e["worst_by"], e["worst_mean"], e["none_mean"]) for e in table] == [
        ("krum", "ipm", 0.40, 0.10), ("median", "ipm", 0.80, 0.90)]
    text = reproduce.worst_case_markdown(m, ["none"])
    assert "| krum | 10.0 ± 0.0 | 40.0 ± 20.0 | ipm |" in text
    assert "| median | 90.0 ± 0.0 | 80.0 ± 0.0 | ipm |" in text


def test_unknown_table_kind_and_metric_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(TINY.replace('kind = "worst-case"', 'kind = "best-case"'))
    exp = reproduce.load(str(path))
    with pytest.raises(ConfigError, match="best-case"):
        reproduce.extra_tables(exp, reproduce.points(exp), {}, tmp_path)
    with pytest.raises(ConfigError, match="no-such-metric"):
        reproduce.matrix([], {}, {"metric": "no-such-metric"})


TINY = """
[experiment]
dataset = "synthetic"
model = "logreg"
workers = 7
byzantine = 1
rounds = 2
batch_size = 8
eval_every = 2
eval_train_samples = 50
partition_alpha = 1.0

[sweep]
aggregator = ["median", "krum"]
attack = ["none", "sign-flip", "alie"]
partition = ["iid", "dirichlet"]
seeds = [0, 1]

[reproduce]
title = "tiny"
columns = ["final_test_accuracy"]
[reproduce.plot]
kind = "heatmap"
rows = ["pre_aggregators", "aggregator"]
cols = "attack"
panel = "partition"

[[reproduce.tables]]
kind = "worst-case"
name = "worst"
rows = ["pre_aggregators", "aggregator"]
cols = "attack"
panel = "partition"
exclude = ["none"]

[[reproduce.tables]]
kind = "matrix"
name = "cells"
rows = ["pre_aggregators", "aggregator"]
cols = "attack"
panel = "partition"

[[reproduce.variants]]
label = ""
pre_aggregators = [[], ["nnm"]]
"""


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    out = tmp_path / "out"
    result = reproduce.reproduce(str(path), out=out, jobs=1, quiet=True, threads=1)
    pts = reproduce.points(reproduce.load(str(path)))
    assert len(pts) == 2 * 3 * 2 * 2 * 2 == result.runs_executed
    assert result.figure is not None and result.figure.stat().st_size > 5000
    # the worst case, recomputed here from the runs' summaries
    acc: dict[tuple[str, str, str], list[float]] = {}
    for p in pts:
        rule = ("nnm + " if p.config.pre_aggregators else "") + p.config.aggregator
        value = read_json(out / p.name / "summary.json")["final_test_accuracy"]
        acc.setdefault((p.config.partition, rule, p.config.attack), []).append(value)
    with open(out / "worst.csv") as fh:
        worst = list(csv.DictReader(fh))
    assert [w["row"] for w in worst] == ["median", "nnm + median", "krum", "nnm + krum"]
    for w in worst:
        for part in ("iid", "dirichlet"):
            means = {a: sum(v) / len(v) for (pp, r, a), v in acc.items()
                     if pp == part and r == w["row"] and a != "none"}
            low = min(means.values())
            assert math.isclose(float(w[f"partition={part}:worst_mean"]), low, rel_tol=1e-12)
            assert means[w[f"partition={part}:worst_by"]] == low
            ref = acc[(part, w["row"], "none")]
            assert math.isclose(float(w[f"partition={part}:none_mean"]), sum(ref) / len(ref))
    with open(out / "cells.csv") as fh:
        cells = list(csv.DictReader(fh))
    assert len(cells) == 2 * 4 * 3 and all(c["seeds"] == "2" for c in cells)
    text = (out / "table.md").read_text()
    assert "worst case" in text and "| nnm + krum |" in text and "figure.png" in text
    # the second invocation runs nothing and writes the same tables
    again = reproduce.reproduce(str(path), out=out, jobs=1, quiet=True, threads=1)
    assert again.runs_executed == 0
    with open(out / "worst.csv") as fh:
        assert list(csv.DictReader(fh)) == worst


def test_data_dir_replaces_the_experiments(tmp_path: Path) -> None:
    exp = reproduce.load("field-claim-minmax", EXPERIMENTS)
    pts = reproduce.points(exp, data_dir=tmp_path)
    assert pts and all(p.config.data_dir == str(tmp_path.resolve()) for p in pts)
    assert [p.name for p in pts] == [p.name for p in reproduce.points(exp)]


def test_data_dir_flag_refuses_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    from byzsgd.cli import main

    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "field-claim-minmax", "--data-dir", str(afile)])
    assert e.value.code == 2 and "argument --data-dir:" in capsys.readouterr().err
