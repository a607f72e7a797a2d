"""The one-round tool on the toy examples of Fall of Empires (5.2.1, 5.3.1), its report, its
CLI, and the K=V parameter parser."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from byzsgd import aggregators as G
from byzsgd import attacks as A
from byzsgd._params import parse_params, parse_value
from byzsgd.attacks import ClassicAttack, Context
from byzsgd.cli_round import configure_parser, load_gradients, run
from byzsgd.oneround import evaluate


class Given(ClassicAttack):
    """Sends fixed Byzantine rows (the papers' U sets)."""

    name = "given"
    supported_knowledge = ("none",)

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.fixed = rows

    def forge(self, ctx: Context) -> torch.Tensor:
        return self.fixed.to(ctx.dtype, copy=True)


def column(*values):
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_median_toy_example():
    """Fall of Empires 5.2.1: V = {-0.1, 0.1, 0.3}, U = {-4, -2} -> Median = -0.1."""
    v = column(-0.1, 0.1, 0.3)
    report = evaluate("median", Given(column(-4.0, -2.0)), v, 2)
    assert report.aggregate.item() == pytest.approx(-0.1)
    assert report.inner_product == pytest.approx(-0.1 * 0.1)
    assert report.inner_product < 0 and not report.tolerant
    assert report.cosine == pytest.approx(-1.0)
    assert report.distance == pytest.approx(0.2)
    assert report.selected is None and report.byzantine_selected is None
    assert list(report.byzantine_rows) == [3, 4] and (report.n, report.h, report.f) == (5, 3, 2)


KRUM_V = (0.0, 0.02, 0.14, 0.26, 0.38, 0.5)
KRUM_SCORES = [0.0244, 0.0244, 0.0244, 0.0304, 0.0436, 0.1060, 0.1440, 0.2160, 0.4320]


def test_krum_toy_example():
    """Fall of Empires 5.3.1: V as above (mean 0.2167), U = 3 x {-0.1} -> Krum = -0.1."""
    v = column(*KRUM_V)
    report = evaluate("krum", Given(column(-0.1, -0.1, -0.1)), v, 3)
    assert report.aggregate.item() == pytest.approx(-0.1)
    assert report.mean.item() == pytest.approx(0.2167, abs=1e-4)
    assert not report.tolerant and report.cosine == pytest.approx(-1.0)
    assert report.selected == [6] and report.byzantine_selected == [6]
    # KR(.) of U u V listed in the paper: squared distances to the m - q - 2 = 4 nearest
    x = torch.tensor([-0.1, -0.1, -0.1, *KRUM_V], dtype=torch.float64)
    sq = (x[:, None] - x[None, :]) ** 2
    scores = [float(torch.sort(torch.cat([sq[i, :i], sq[i, i + 1:]])).values[:4].sum())
              for i in range(9)]
    assert scores == pytest.approx(KRUM_SCORES, abs=1e-4)
    assert G.aggregate("krum", x[:, None], 3).selected.tolist() == [0]   # Byzantine first
    # the same U from the registered ipm attack: epsilon = 0.1 / mean(V)
    eps = 0.1 / float(v.mean())
    report = evaluate("krum", "ipm", v, 3, attack_params={"epsilon": eps})
    assert report.aggregate.item() == pytest.approx(-0.1)
    assert report.byzantine_selected and not report.tolerant


def test_ipm_against_median_fall_of_empires_6_2():
    """Large epsilon defeats the median when the mean is small relative to the spread."""
    g = torch.Generator().manual_seed(0)
    honest = 0.05 + torch.randn(13, 30, generator=g)
    attacked = evaluate("median", "ipm", honest, 12, attack_params={"epsilon": 10.0})
    assert not attacked.tolerant
    defended = evaluate("median", "ipm", honest, 12, attack_params={"epsilon": -10.0})
    assert defended.inner_product > attacked.inner_product


def test_report_and_inputs_untouched():
    g = torch.Generator().manual_seed(1)
    honest = torch.randn(9, 20, generator=g) + 0.3
    own = torch.randn(2, 20, generator=g)
    h0, o0 = honest.clone(), own.clone()
    report = evaluate("krum", "alie", honest, 2, own=own, attack_params={"z": 1.0})
    assert torch.equal(honest, h0) and torch.equal(own, o0)
    assert report.attack == "alie" and report.attack_params == {"z": 1.0, "knowledge": "own"}
    assert report.rule == "krum" and report.rule_f == 2
    assert report.byzantine_rows == range(9, 11)
    assert len(report.selected) == 1
    assert set(report.byzantine_selected) <= {9, 10}
    a, m = report.aggregate, honest.double().mean(0)
    assert report.inner_product == pytest.approx(float(a @ m))
    assert report.distance == pytest.approx(float((a - m).norm()))
    assert report.aggregate_norm == pytest.approx(float(a.norm()))
    assert report.tolerant == (report.inner_product >= 0)
    # own defaults to the first f correct rows: alie then shifts their statistics
    default = evaluate("krum", "alie", honest, 2, attack_params={"z": 1.0})
    explicit = evaluate("krum", "alie", honest, 2, own=honest[:2], attack_params={"z": 1.0})
    assert default == explicit
    text = report.format()
    assert "krum" in text and "alie" in text and "selected" in text
    assert json.loads(json.dumps(report.to_dict()))["byzantine_rows"] == [9, 10]


def test_bound_rule_objects_and_seed():
    g = torch.Generator().manual_seed(2)
    honest = torch.randn(10, 8, generator=g)
    rule = G.bind("bulyan", 1, base="medoid")
    r1 = evaluate(rule, A.get("gaussian"), honest, 1, seed=5)
    r2 = evaluate(rule, "gaussian", honest, 1, seed=5)
    assert r1 == r2
    assert evaluate("mean", "gaussian", honest, 1, seed=5) != \
        evaluate("mean", "gaussian", honest, 1, seed=6)
    assert r1.byzantine_selected == []                       # sigma = 200: rejected
    with pytest.raises(ValueError, match="rule_params only apply"):
        evaluate(rule, "gaussian", honest, 1, rule_params={"base": "krum"})
    with pytest.raises(ValueError, match="attack_params only apply"):
        evaluate("krum", A.get("gaussian"), honest, 1, attack_params={"sigma": 1})
    with pytest.raises(ValueError, match="krum needs n >= 2f \\+ 3"):
        evaluate("krum", "gaussian", honest, 8)
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate("krum", "nope", honest, 1)


def test_dimensional_attack():
    g = torch.Generator().manual_seed(3)
    honest = torch.randn(20, 300, generator=g) + 0.1
    report = evaluate("mean", "bit-flip", honest, 1, attack_params={"coordinates": 10})
    assert report.dimensional and report.n == 20 and report.corrupted_values == 10
    assert 1 <= len(report.byzantine_rows) <= 10
    assert report.aggregate_norm > 1e15                      # the mean is not resilient
    robust = evaluate("median", "bit-flip", honest, 1, attack_params={"coordinates": 10})
    assert robust.aggregate_norm < 10                        # MarMed is (Xie et al. 5.4)
    assert "values corrupted" in robust.format()


def test_leeway_gamma_reported():
    honest = torch.randn(10, 30, generator=torch.Generator().manual_seed(5))
    report = evaluate("krum", "lp-coordinate", honest, 2)
    assert report.gamma is not None and report.gamma > 0
    assert report.byzantine_selected == [10]
    assert report.aggregate[0].item() == pytest.approx(honest[:, 0].mean().item() + report.gamma)
    assert "gamma_m" in report.format()
    assert evaluate("krum", "ipm", honest, 2).gamma is None


def test_backdoor_context():
    honest = torch.randn(10, 6, generator=torch.Generator().manual_seed(4))
    report = evaluate("krum", "alie-backdoor", honest, 2,
                      context={"backdoor_loss": lambda v: v.sum()})
    assert report.f == 2


# --- CLI -----------------------------------------------------------------------------------

def cli(argv, capsys):
    parser = configure_parser(argparse.ArgumentParser())
    code = run(parser.parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_synthetic_json(capsys):
    argv = ["--aggregator", "krum", "--attack", "ipm", "--attack-param", "epsilon=0.1",
            "--byzantine", "3", "--synthetic", "12,50", "--mean", "0.01", "--std", "1",
            "--seed", "7", "--json"]
    code, out, _ = cli(argv, capsys)
    assert code == 0
    data = json.loads(out)
    assert data["n"] == 15 and data["h"] == 12 and data["byzantine_rows"] == [12, 13, 14]
    assert data["attack_params"] == {"epsilon": 0.1, "knowledge": "omniscient"}
    assert isinstance(data["tolerant"], bool)
    code, again, _ = cli(argv, capsys)
    assert again == out                                     # seeded: reproducible


def test_cli_files_and_text(tmp_path, capsys):
    v = np.array([[-0.1], [0.1], [0.3]])
    np.save(tmp_path / "v.npy", v)
    torch.save(torch.tensor(v), tmp_path / "v.pt")
    assert torch.equal(load_gradients(tmp_path / "v.pt"), load_gradients(tmp_path / "v.npy"))
    code, out, _ = cli(["--aggregator", "median", "--attack", "ipm", "--attack-param",
                        "epsilon=40", "--byzantine", "2", "--gradients",
                        str(tmp_path / "v.npy")], capsys)
    assert code == 0 and "NOT tolerant" in out and "aggregate        [-0.1]" in out
    code, out, _ = cli(["--aggregator", "bulyan", "--aggregator-param", "base=medoid",
                        "--attack", "bit-flip", "--attack-param", "bits=22,30,31,32",
                        "--byzantine", "1", "--synthetic", "9,20"], capsys)
    assert code == 0 and "bit-flip (coordinates=1000, per_coordinate=1, bits=(22, 30, 31, 32)" \
        in out


@pytest.mark.parametrize(("argv", "match"), [
    (["--attack", "nope"], "unknown attack"),
    (["--attack", "ipm", "--attack-param", "eps"], "K=V"),
    (["--attack", "alie", "--byzantine", "-1"], "f must be an int >= 0"),
    (["--attack", "gambler", "--attack-param", "probability=2"],
     "gambler: probability must be a float in [0, 1], got 2"),
])
def test_cli_errors(argv, match, capsys):
    code, _, err = cli(["--aggregator", "krum", "--synthetic", "9,4", *argv], capsys)
    assert code == 2 and match in err


def test_cli_bad_file(tmp_path, capsys):
    np.save(tmp_path / "flat.npy", np.zeros(4))
    code, _, err = cli(["--aggregator", "krum", "--attack", "ipm", "--gradients",
                        str(tmp_path / "flat.npy")], capsys)
    assert code == 2 and "expected shape (rows, d)" in err


# --- K=V parameters ---------------------------------------------------------------------------

def test_parse_params():
    assert parse_params(["z=1.5", "steps=5", "knowledge=own", "flag=true", "gamma=none",
                         "bits=22,30,31,32", "scale=-1e20", "sign=-1", "per-coordinate=2",
                         "name='12'", "shape=(1, 2)", "empty=[]", "x=inf"]) == {
        "z": 1.5, "steps": 5, "knowledge": "own", "flag": True, "gamma": None,
        "bits": (22, 30, 31, 32), "scale": -1e20, "sign": -1, "per_coordinate": 2,
        "name": "12", "shape": (1, 2), "empty": (), "x": float("inf")}
    assert parse_params(None) == {} and parse_params([]) == {}
    assert parse_value("False") is False and parse_value("a,b") == ("a", "b")
    assert isinstance(parse_value("3"), int) and isinstance(parse_value("3.0"), float)
    for bad, match in [(["novalue"], "K=V"), (["=3"], "K=V"), (["a=1", "a=2"], "twice"),
                       (["a b=1"], "identifier")]:
        with pytest.raises(ValueError, match=match):
            parse_params(bad)
