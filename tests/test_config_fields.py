"""Every config field, and every command-level option, refuses wrong types and out-of-range
values before anything runs (issue 17, item 9): through the Python API (``ConfigError``) and the
command line (exit code 2), with a message naming the field, and nothing written to --out.

The values are derived from each field's annotation and its declared constraint
(``config.CONSTRAINTS``), so a new field is covered as soon as it is declared."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from byzsgd.cli import main
from byzsgd.config import (
    CONSTRAINTS,
    NONEMPTY,
    ConfigError,
    ExperimentConfig,
    Interval,
    Options,
    field_types,
    to_toml,
)
from byzsgd.experiment import run

FIELDS = [f.name for f in fields(ExperimentConfig)]


def test_every_field_declares_its_constraint() -> None:
    assert sorted(CONSTRAINTS) == sorted(FIELDS), \
        "declare each config field's constraint in config.CONSTRAINTS (None: its type only)"
    ExperimentConfig().validate()  # the defaults are valid


def wrong_types(name: str) -> list[Any]:
    """Values of the wrong type for field ``name``."""
    kind, optional = field_types()[name]
    values: list[Any] = {
        int: ["5", 2.5, True, [1]],
        float: ["0.1", True, math.inf, -math.inf, math.nan, [0.1]],
        str: [5, 1.5, True, ["a"]],
        dict: ["x", [1], 3, {1: 2}],
        list: ["x", 3, {"a": 1}],
    }[kind]
    return values + ([] if optional else [None])


def out_of_range(name: str) -> list[Any]:
    """Values of the right type outside field ``name``'s declared constraint."""
    kind, _ = field_types()[name]
    rule = CONSTRAINTS[name]
    if rule is None:
        return []
    if isinstance(rule, Options):
        return ["nope", rule.values[0].upper() + "!"]
    if rule is NONEMPTY and kind is str:
        return [""]
    assert isinstance(rule, Interval)
    step = 1 if kind is int else 0.5
    out = []
    if rule.low is not None:
        out.append(rule.low - step)
        if rule.closed in ("right", "neither"):
            out.append(kind(rule.low))
    if rule.high is not None:
        out.append(rule.high + step)
        if rule.closed in ("left", "neither"):
            out.append(kind(rule.high))
    return out


CASES = [(name, value) for name in FIELDS for value in wrong_types(name) + out_of_range(name)]
IDS = [f"{name}={value!r}" for name, value in CASES]


def test_every_field_has_cases() -> None:
    for name in FIELDS:
        assert any(n == name for n, _ in CASES)
        if CONSTRAINTS[name] is not None:
            assert out_of_range(name), name


@pytest.mark.parametrize(("name", "value"), CASES, ids=IDS)
def test_python_api_refuses(tmp_path: Path, name: str, value: Any) -> None:
    config = ExperimentConfig(**{name: value})
    with pytest.raises(ConfigError, match=rf"^{name} must be .*, got "):
        config.validate()
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=rf"^{name} must be"):
        run(config, out)
    assert not out.exists()


def _toml_ok(value: Any) -> bool:
    return value is not None and not (isinstance(value, dict) and any(
        not isinstance(k, str) for k in value))


@pytest.mark.parametrize(("name", "value"), [c for c in CASES if _toml_ok(c[1])],
                         ids=[i for c, i in zip(CASES, IDS, strict=True) if _toml_ok(c[1])])
def test_toml_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                      value: Any) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[experiment]\n" + to_toml({name: value}).replace("\n[", "\n[experiment."))
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--quiet"]) == 2
    assert f"{name} must be" in capsys.readouterr().err
    assert not out.exists()


def _flag_cases() -> list[tuple[str, str]]:
    """(field, command-line text) for every scalar field: out-of-range values, and text that
    is not of the field's type."""
    out = []
    for name in FIELDS:
        kind, _ = field_types()[name]
        if kind not in (int, float, str):
            continue
        texts = [str(v) for v in out_of_range(name)]
        if kind is int:
            texts += ["5.5", "x"]
        if kind is float:
            texts += ["x", "inf", "nan", "-inf"]
        out += [(name, t) for t in texts]
    return out


@pytest.mark.parametrize(("name", "text"), _flag_cases())
def test_flags_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                      text: str) -> None:
    out = tmp_path / "out"
    flag = "--" + name.replace("_", "-")
    try:
        code = main(["run", "--out", str(out), "--quiet", flag, text])
    except SystemExit as e:  # argparse: not of the flag's type or choices
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert f"{name} must be" in err or f"argument {flag}:" in err, err
    assert not out.exists()


def test_parameter_flags_and_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--aggregator-param", "m"]) == 2
    assert "K=V" in capsys.readouterr().err
    assert not out.exists()


# -- the shape of a config file ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ('workers = 7\n[experiment]\nrounds = 3\n', "workers outside the [experiment] table"),
    ('[experiment]\nrounds = 3\n[attack_params]\nz = 1.0\n', "attack_params outside"),
    ('[experiment]\nrounds = 3\n[extra]\nx = 1\n', "extra outside the [experiment] table"),
    ('[extra]\nx = 1\n', "unknown config field(s): extra"),
    ('[experiment]\nworkers = "5"\n', "workers must be an int in [1, inf), got '5' (str)"),
    ('[experiment]\nrounds = 2.5\n', "rounds must be an int in [1, inf), got 2.5 (float)"),
    ('experiment = 3\n', "experiment must be a table"),
    ('workers = \n', "invalid TOML"),
])
def test_config_file_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                           message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    sweep = tmp_path / "s.toml"
    sweep.write_text(text + ("\n[sweep]\nseeds = [0]\n" if "[experiment]" in text else ""))
    assert main(["sweep", "--config", str(sweep), "--out", str(out), "--no-plot"]) == 2
    assert not out.exists()


def test_top_level_config_still_reads(tmp_path: Path) -> None:
    """Without an [experiment] table the fields are at the top level (and the sweep tables
    are not fields)."""
    from byzsgd.config import load_toml

    config = tmp_path / "c.toml"
    config.write_text('workers = 7\n[attack_params]\nz = 1.0\n[sweep]\nseeds = [0]\n')
    assert load_toml(config) == {"workers": 7, "attack_params": {"z": 1.0}}


# -- command-level options -------------------------------------------------------------------------

def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> None:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2, argv
    err = capsys.readouterr().err
    assert all(e in err for e in expected), err


@pytest.mark.parametrize(("command", "option", "value"), [
    ("run", "--deadline", "0"), ("run", "--deadline", "-1"), ("run", "--deadline", "nan"),
    ("run", "--deadline", "inf"), ("run", "--connect-timeout", "0"),
    ("run", "--idle-timeout", "-5"), ("run", "--master-port", "0"),
    ("run", "--master-port", "70000"), ("run", "--nnodes", "0"), ("run", "--node-rank", "-1"),
    ("run", "--nproc-per-node", "0"), ("run", "--backend", "mpi"),
    ("sweep", "--jobs", "0"), ("sweep", "--seeds", "a,b"), ("sweep", "--seeds", "-1"),
    ("demo", "--jobs", "-2"),
])
def test_command_options_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 command: str, option: str, value: str) -> None:
    out = tmp_path / "out"
    config = tmp_path / "c.toml"
    config.write_text('[experiment]\nrounds = 2\n[sweep]\nseeds = [0]\n')
    argv = [command, "--out", str(out), option, value]
    if command == "sweep":
        argv += ["--config", str(config)]
    if command == "run":
        argv += ["--backend", "distributed"]
    _refused(capsys, argv, f"argument {option}:")
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "sweep", "demo", "reproduce"])
def test_out_must_name_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ["--config", "c.toml"] if command == "sweep" else \
        ["alie-table1"] if command == "reproduce" else []
    (tmp_path / "c.toml").write_text('[experiment]\nrounds = 2\n')
    _refused(capsys, [command, "--out", "", *extra], "argument --out:", "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
    (tmp_path / "file").write_text("x")
    _refused(capsys, [command, "--out", "file", *extra], "argument --out:", "is a file")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize(("option", "value"), [("--jobs", "0"), ("--seeds", "0"),
                                               ("--threads", "0"), ("--seeds", "x")])
def test_reproduce_options_refused(capsys: pytest.CaptureFixture[str], option: str,
                                   value: str) -> None:
    _refused(capsys, ["reproduce", "alie-table1", option, value], f"argument {option}:")


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_config_path_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      command: str) -> None:
    out = tmp_path / "out"
    _refused(capsys, [command, "--config", str(tmp_path), "--out", str(out)], "is a folder")
    _refused(capsys, [command, "--config", str(tmp_path / "none.toml"), "--out", str(out)],
             "not found")
    assert not out.exists()


def test_distributed_node_refuses_a_zero_deadline(capsys: pytest.CaptureFixture[str]) -> None:
    from byzsgd.distributed import node

    with pytest.raises(SystemExit) as e:
        node.build_parser().parse_args(["--deadline", "0"])
    assert e.value.code == 2
    assert "argument --deadline:" in capsys.readouterr().err
