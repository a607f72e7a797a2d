"""The one sweep/grid expansion (``byzsgd sweep`` and ``byzsgd reproduce``).

``data/grid_runs.json`` holds the run lists (name, table row, config fields that differ from
the defaults) that the two expansions of main at d6cf020 (``experiment.Sweep`` and
``reproduce.points``, before they became one) produced for every ``experiments/*.toml``: the
runs already on disk and the numbers in REPRODUCTION.md stay valid only if they do not move.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from byzsgd import reproduce
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.experiment import Sweep

ROOT = reproduce.repo_root()
EXPERIMENTS = ROOT / "experiments"
FROZEN = json.loads((Path(__file__).parent / "data" / "grid_runs.json").read_text())


def _runs(pairs: list[tuple[str, str, ExperimentConfig]]) -> list[list[object]]:
    defaults = ExperimentConfig().to_json()
    out = []
    for name, row, cfg in pairs:
        values = {k: v for k, v in cfg.to_json().items() if k not in defaults or v != defaults[k]}
        if values.get("data_dir") and os.path.isabs(values["data_dir"]):
            values["data_dir"] = os.path.relpath(values["data_dir"], ROOT)
        out.append([name, row, values])
    return out


#: Experiments added after the freeze, each with its own expansion test (name -> test file).
NOT_FROZEN = {"field-rules-attacks": "test_field_experiment.py",
              "field-claim-preagg-noniid": "test_field_experiment.py",
              "field-claim-minmax": "test_field_experiment.py"}


def test_every_experiment_is_frozen() -> None:
    names = sorted(p.stem for p in EXPERIMENTS.glob("*.toml") if p.stem not in NOT_FROZEN)
    assert names and names == sorted(k.split(":")[1] for k in FROZEN if k.startswith("sweep:"))
    for test in set(NOT_FROZEN.values()):
        assert (Path(__file__).parent / test).exists()


@pytest.mark.parametrize("key", sorted(FROZEN))
def test_expansion_matches_the_old_one(key: str) -> None:
    mode, name = key.split(":")
    if mode == "sweep":
        got = _runs([(n, "", c) for n, c in Sweep.from_toml(EXPERIMENTS / f"{name}.toml")
                     .configs()])
    else:
        exp = reproduce.load(name, EXPERIMENTS)
        kw = {"reproduce": {}, "reproduce-quick": {"quick": True},
              "reproduce-seeds3": {"seeds": [0, 1, 2]}}[mode]
        got = _runs([(p.name, p.row, p.config) for p in reproduce.points(exp, **kw)])
    assert got == FROZEN[key]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return path


PARAM_AXIS = ('[experiment]\naggregator = "median"\nworkers = 7\nbyzantine = 1\n'
              'attack = "alie"\nrounds = 2\n'
              '[sweep]\nseeds = [0]\nattack_params.z = [0.5, 1.0]\n'
              '[sweep.params.alie]\nz = 3.0\n')


def test_dotted_parameter_axis_in_sweep_and_reproduce(tmp_path: Path) -> None:
    """``attack_params.z = [...]`` under [sweep] is an axis for both commands (it was refused
    by reproduce), overriding the per-name [sweep.params.alie] value."""
    path = _write(tmp_path, PARAM_AXIS)
    swept = Sweep.from_toml(path).configs()
    assert [n for n, _ in swept] == ["attack_params.z=0.5__seed=0", "attack_params.z=1.0__seed=0"]
    assert [c.attack_params for _, c in swept] == [{"z": 0.5}, {"z": 1.0}]
    path.write_text(PARAM_AXIS + '[reproduce]\ntitle = "t"\n')
    pts = reproduce.points(reproduce.load(str(path)))
    assert [(p.name, p.config) for p in pts] == swept
    assert [p.row for p in pts] == ["attack_params.z=0.5", "attack_params.z=1"]


def test_dotted_parameter_axis_in_a_variant(tmp_path: Path) -> None:
    path = _write(tmp_path, PARAM_AXIS + '[reproduce]\ntitle = "t"\n'
                  '[[reproduce.variants]]\nlabel = "v"\nattack_params.z = [2.0]\n')
    pts = reproduce.points(reproduce.load(str(path)))
    assert [p.name for p in pts] == ["v__attack_params.z=2.0__seed=0"]
    assert pts[0].config.attack_params == {"z": 2.0}


@pytest.mark.parametrize("grid", ['worker = [1, 2]', 'workers = 3', 'seed.x = [1]',
                                  'attack_params.z = 1.0'])
def test_bad_axes_refused_by_both(tmp_path: Path, grid: str) -> None:
    path = _write(tmp_path, f'[experiment]\nrounds = 2\n[sweep]\n{grid}\n'
                            f'[reproduce]\ntitle = "t"\n')
    with pytest.raises(ConfigError, match=r"\[sweep\]"):
        Sweep.from_toml(path)
    with pytest.raises(ConfigError, match=r"\[sweep\]"):
        reproduce.load(str(path))
