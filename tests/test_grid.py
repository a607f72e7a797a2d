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
from byzsgd.config import ExperimentConfig
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


def test_every_experiment_is_frozen() -> None:
    names = sorted(p.stem for p in EXPERIMENTS.glob("*.toml"))
    assert names and names == sorted(k.split(":")[1] for k in FROZEN if k.startswith("sweep:"))


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
