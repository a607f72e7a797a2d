"""A user's path end to end (issue 12): a plugin module written here registers a tabular data
set, a model with BatchNorm and LayerNorm, a rule (a plain function) and an attack; ``byzsgd run
--plugin`` trains on them and records them truthfully, resumes after a SIGKILL with the numbers
of an uninterrupted run, runs in a sweep of two processes and on the distributed backend; bad
plugins fail before training with a message naming them."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byzsgd.cli import main
from byzsgd.config import ConfigError, ExperimentConfig, load_toml
from byzsgd.results import read_csv, read_json

PLUGIN = '''
import os
import time

import torch
from torch import nn

from byzsgd import aggregators, attacks, data, models


@data.register("plug-tab", summary="4 Gaussian classes in 12 dimensions (tabular rows)")
def plug_tab(data_dir, download):
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 4, (700,), generator=g)
    x = 2 * torch.randn(4, 12, generator=g)[y] + torch.randn(700, 12, generator=g)
    return data.Dataset.from_tensors(x[:600], y[:600], x[600:], y[600:], name="plug-tab")


@models.register("plug-norm", summary="12-16-16-k MLP with BatchNorm and LayerNorm")
def plug_norm(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(),
                         nn.Linear(16, num_classes))


@aggregators.register("plug-trim", summary="coordinate-wise mean without the f extremes")
def plug_trim(gradients, f):
    if os.environ.get("PLUG_SLOW"):  # slows the run down (for the kill), numbers unchanged
        time.sleep(float(os.environ["PLUG_SLOW"]))
    s = gradients.sort(dim=0).values
    return s[f: gradients.shape[0] - f].mean(dim=0)


@attacks.register
class PlugShift(attacks.ClassicAttack):
    """The honest mean shifted by -scale times itself."""

    name = "plug-shift"
    summary = "mean(honest) * (1 - scale)"
    supported_knowledge = ("omniscient",)
    constraints = {"scale": [float, int]}

    def __init__(self, *, scale=3.0, knowledge=None):
        super().__init__(knowledge=knowledge)
        self.scale = float(scale)

    def forge(self, ctx):
        return ctx.rows(ctx.need_honest().mean(dim=0) * (1 - self.scale))
'''

CONFIG = dict(dataset="plug-tab", model="plug-norm", aggregator="plug-trim",
              attack="plug-shift", workers=5, byzantine=1, batch_size=16, lr=0.1,
              momentum=0.5, eval_every=10, eval_train_samples=100, seed=3)
#: Columns that measure time, not the run.
CLOCK = {"rounds_per_s"}


@pytest.fixture(autouse=True)
def restore_registries():  # type: ignore[no-untyped-def]
    """The names a test registers in this process (byzsgd.run's objects) are removed after
    it, so that the tests that go over every registered name see the library's only."""
    from byzsgd.aggregators import _registry as rules
    from byzsgd.attacks import _registry as attack_registry
    from byzsgd.data import _registry as data_registry
    from byzsgd.models import _registry as model_registry

    tables = [rules._RULES, attack_registry._ATTACKS, data_registry._SPECS,
              data_registry.DESCRIPTIONS, model_registry._SPECS, model_registry.DESCRIPTIONS]
    saved = [dict(t) for t in tables]
    yield
    for table, old in zip(tables, saved, strict=True):
        table.clear()
        table.update(old)


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "plug_e2e.py"
    path.write_text(PLUGIN)
    return path


def flags(values: dict[str, object]) -> list[str]:
    return [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), str(v))]


def byzsgd(*args: str, env: dict[str, str] | None = None, timeout: float = 240
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "byzsgd.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def numbers(out: Path) -> list[dict[str, float]]:
    rows = read_csv(out / "metrics.csv") + read_csv(out / "rounds.csv")
    return [{k: float(v) for k, v in r.items() if k not in CLOCK} for r in rows]


def assert_same(a: Path, b: Path, rtol: float = 0.0) -> None:
    xs, ys = numbers(a), numbers(b)
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        for key in x:
            u, v = x[key], y[key]
            assert (math.isnan(u) and math.isnan(v)) or math.isclose(
                u, v, rel_tol=rtol, abs_tol=1e-6 if rtol else 0.0), (x["round"], key, u, v)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plugin_run_records_names_and_resumes_after_sigkill(tmp_path: Path, plugin: Path
                                                           ) -> None:
    values = {**CONFIG, "rounds": 60}
    whole = tmp_path / "whole"
    done = byzsgd("run", "--plugin", str(plugin), "--out", str(whole), "--quiet",
                  *flags(values))
    assert done.returncode == 0, done.stderr[-3000:]
    record = load_toml(whole / "config.toml")
    assert {k: record[k] for k in ("dataset", "model", "aggregator", "attack")} == {
        "dataset": "plug-tab", "model": "plug-norm", "aggregator": "plug-trim",
        "attack": "plug-shift"}
    assert record["plugins"] == [str(plugin.resolve())]
    summary = read_json(whole / "summary.json")
    assert summary["status"] == "complete" and summary["final_test_accuracy"] > 0.5

    # killed mid-run (a real process, SIGKILL once a checkpoint exists), then resumed from its
    # own record without re-typing --plugin
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "byzsgd.cli", "run", "--plugin", str(plugin), "--out",
           str(cut), "--quiet", *flags(values)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PLUG_SLOW": "0.05"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 200
    while not (cut / "checkpoint.pt").exists() and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert read_json(cut / "summary.json")["status"] == "running"
    assert len(read_csv(cut / "rounds.csv")) < 60
    resumed = byzsgd("run", "--config", str(cut / "config.toml"), "--out", str(cut),
                     "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_json(cut / "summary.json")["status"] == "complete"
    assert_same(whole, cut)

    # re-run from the record alone, in another folder: the same numbers
    again = tmp_path / "again"
    rerun = byzsgd("run", "--config", str(whole / "config.toml"), "--out", str(again),
                   "--quiet")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same(whole, again)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plugin_in_a_sweep_of_two_processes(tmp_path: Path, plugin: Path) -> None:
    base = {**CONFIG, "rounds": 20}
    text = "[experiment]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"')
                                      for k, v in base.items())
    text += f'plugins = ["{plugin}"]\n[sweep]\naggregator = ["plug-trim", "median"]\n'
    text += 'attack = ["plug-shift", "none"]\n'
    config = tmp_path / "grid.toml"
    config.write_text(text)
    out = tmp_path / "sweep"
    done = byzsgd("sweep", "--config", str(config), "--out", str(out), "--jobs", "2",
                  "--no-plot", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    table = read_csv(out / "sweep.csv")
    assert sorted((r["aggregator"], r["attack"]) for r in table) == [
        ("median", "none"), ("median", "plug-shift"), ("plug-trim", "none"),
        ("plug-trim", "plug-shift")]
    runs = sorted(p.parent for p in out.glob("*/summary.json"))
    assert len(runs) == 4
    for run in runs:
        assert read_json(run / "summary.json")["status"] == "complete"
        assert load_toml(run / "config.toml")["plugins"] == [str(plugin)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_plugin_on_the_distributed_backend(tmp_path: Path, plugin: Path) -> None:
    """The server and worker processes import the plugin (the file path travels in the config)
    and give the simulator's numbers."""
    values = {**CONFIG, "workers": 3, "rounds": 6, "eval_every": 3}
    sim = tmp_path / "sim"
    done = byzsgd("run", "--plugin", str(plugin), "--out", str(sim), "--quiet",
                  *flags(values))
    assert done.returncode == 0, done.stderr[-3000:]
    dist = tmp_path / "dist"
    done = byzsgd("run", "--backend", "distributed", "--plugin", str(plugin), "--out",
                  str(dist), "--quiet", "--deadline", "20", "--connect-timeout", "60",
                  "--idle-timeout", "60", *flags(values))
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_json(dist / "summary.json")["status"] == "complete"
    assert load_toml(dist / "config.toml")["model"] == "plug-norm"
    assert_same(sim, dist, rtol=1e-4)


# -- bad plugins fail before training, naming the plugin -------------------------------------

def run_cli(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> tuple[int, str]:
    code = main(["run", "--out", str(out), "--quiet", "--rounds", "2", *args])
    return code, capsys.readouterr().err


def test_unknown_plugin_module_is_a_config_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, tmp_path / "out", "--plugin", "no_such_plugin_xyz")
    assert code == 2
    assert "plugin 'no_such_plugin_xyz': no module named 'no_such_plugin_xyz'" in err
    assert "PYTHONPATH" in err and not (tmp_path / "out").exists()
    code, err = run_cli(capsys, tmp_path / "out", "--plugin", str(tmp_path / "missing.py"))
    assert code == 2 and "missing.py" in err and "no such file" in err


def test_a_plugin_that_raises_shows_its_last_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plug_raises.py"
    bad.write_text("x = 1\nraise RuntimeError('the plugin is broken here')\n")
    code, err = run_cli(capsys, tmp_path / "out", "--plugin", str(bad))
    assert code == 2
    assert "plug_raises.py" in err and "raised on import" in err
    assert "RuntimeError: the plugin is broken here" in err and "line 2" in err
    assert not (tmp_path / "out").exists()


def test_a_plugin_that_imports_a_missing_module_is_not_called_unknown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    (tmp_path / "plug_needs_dep.py").write_text("import not_installed_dep_xyz\n")
    monkeypatch.chdir(tmp_path)  # a module name, importable from the current folder
    code, err = run_cli(capsys, tmp_path / "out", "--plugin", "plug_needs_dep")
    assert code == 2 and "plugin 'plug_needs_dep' raised on import" in err
    assert "No module named 'not_installed_dep_xyz'" in err


def test_a_clashing_registration_names_both(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    clash = tmp_path / "plug_clash.py"
    clash.write_text("from byzsgd import aggregators\n\n"
                     "@aggregators.register('median')\n"
                     "def my_median(gradients, f):\n    return gradients.mean(dim=0)\n")
    code, err = run_cli(capsys, tmp_path / "out", "--plugin", str(clash))
    assert code == 2 and "plug_clash.py" in err
    assert "aggregation rule 'median' is already registered by" in err
    assert "choose another name" in err and not (tmp_path / "out").exists()


def test_plugins_field_type_and_merge(tmp_path: Path, plugin: Path) -> None:
    with pytest.raises(ConfigError, match="plugins must be a list"):
        ExperimentConfig(plugins="x").validate()  # type: ignore[arg-type]
    relative = os.path.relpath(plugin)
    config = ExperimentConfig(plugins=[relative, str(plugin), "json"])
    assert config.plugins == [str(plugin.resolve()), "json"]
    assert "plugins" not in ExperimentConfig().to_dict()  # records without plugins unchanged
    toml = tmp_path / "c.toml"
    toml.write_text('plugins = ["json"]\n')
    # in a process of its own: the plugin's registrations stay out of this one
    done = byzsgd("run", "--config", str(toml), "--plugin", str(plugin), "--out",
                  str(tmp_path / "o"), "--quiet", *flags({**CONFIG, "rounds": 2,
                                                          "eval_every": 1}))
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_toml(tmp_path / "o" / "config.toml")["plugins"] == ["json",
                                                                    str(plugin.resolve())]


# -- byzsgd.run with objects ------------------------------------------------------------------

def _objects():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    from byzsgd import attacks
    from byzsgd.data import Dataset

    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 3, (500,), generator=g)
    x = 2 * torch.randn(3, 10, generator=g)[y] + torch.randn(500, 10, generator=g)
    dataset = Dataset.from_tensors(x[:400], y[:400], x[400:], y[400:], name="obj-tab")

    def obj_factory(input_shape, num_classes):  # type: ignore[no-untyped-def]
        return nn.Sequential(nn.Linear(input_shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(),
                             nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(),
                             nn.Linear(16, num_classes))

    def obj_rule(gradients, f):  # type: ignore[no-untyped-def]
        return gradients.median(dim=0).values

    return dataset, obj_factory, obj_rule, attacks.get("sign-flip")


OBJ_CONFIG = dict(workers=5, byzantine=1, rounds=20, batch_size=16, eval_every=10,
                  eval_train_samples=100, seed=1)


def test_run_with_objects_records_qualified_names_and_resumes(tmp_path: Path) -> None:
    import byzsgd

    dataset, factory, rule, attack = _objects()
    out = tmp_path / "obj"
    summary = byzsgd.run(OBJ_CONFIG, out, model=factory, dataset=dataset, rule=rule,
                         attack=attack)
    assert summary["status"] == "complete"
    record = load_toml(out / "config.toml")
    here = f"{__name__}:_objects.<locals>"
    assert record["model"] == f"{here}.obj_factory"
    assert record["aggregator"] == f"{here}.obj_rule"
    assert record["attack"] == "sign-flip"  # a registered class keeps its name
    assert record["dataset"].startswith("byzsgd.data._dataset:Dataset|obj-tab|train=(400,10)")
    assert "sha256=" in record["dataset"]
    # the same objects: a finished run is left as it is
    again = byzsgd.run(OBJ_CONFIG, out, model=factory, dataset=dataset, rule=rule,
                       attack=attack, resume=True)
    assert again["final_test_accuracy"] == summary["final_test_accuracy"]
    # other objects: refused, naming the field
    other = byzsgd.data.Dataset.from_tensors(dataset.x_train + 1, dataset.y_train,
                                             dataset.x_test, dataset.y_test, name="obj-tab")
    with pytest.raises(ConfigError, match=r"was run with dataset = .*pass the same object"):
        byzsgd.run(OBJ_CONFIG, out, model=factory, dataset=other, rule=rule, attack=attack,
                   resume=True)

    def obj_rule(gradients, f):  # type: ignore[no-untyped-def]
        return gradients.mean(dim=0)

    with pytest.raises(ConfigError, match="was run with aggregator = "):
        byzsgd.run(OBJ_CONFIG, out, model=factory, dataset=dataset, rule=obj_rule,
                   attack=attack, resume=True)


def test_run_with_objects_refuses_bad_ones_before_training(tmp_path: Path) -> None:
    from torch import nn

    import byzsgd

    dataset, _, rule, attack = _objects()

    def wrong_width(input_shape, num_classes):  # type: ignore[no-untyped-def]
        return nn.Linear(input_shape[0], num_classes + 1)

    with pytest.raises(ValueError, match=r"returns \(2, 4\).*make its last layer output"):
        byzsgd.run(OBJ_CONFIG, tmp_path / "a", model=wrong_width, dataset=dataset)

    def fails(input_shape, num_classes):  # type: ignore[no-untyped-def]
        raise RuntimeError("cannot build")

    with pytest.raises(ValueError, match=r"its factory .*raised RuntimeError: cannot build"):
        byzsgd.run(OBJ_CONFIG, tmp_path / "b", model=fails, dataset=dataset)
    with pytest.raises(ConfigError, match="model must be a factory"):
        byzsgd.run(OBJ_CONFIG, tmp_path / "c", model=nn.Linear(10, 3), dataset=dataset)
    with pytest.raises(ConfigError, match=r"dataset must be a byzsgd\.data\.Dataset"):
        byzsgd.run(OBJ_CONFIG, tmp_path / "d", dataset=[1, 2], rule=rule, attack=attack)
    with pytest.raises(ValueError, match=r"data set .bad.: y_train has labels outside \[0, 2\)"):
        byzsgd.run(OBJ_CONFIG, tmp_path / "e", rule=rule, dataset=byzsgd.data.Dataset(
            "bad", dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, 2))
    assert not any((tmp_path / x / "metrics.csv").exists() for x in "abcde")


# -- the README's "Extending byzsgd" examples run ---------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(heading: str, kind: str) -> list[str]:
    import re

    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{kind}\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_extending_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    import shlex

    plugin, objects = _section("Extending byzsgd", "python")
    (shell,) = _section("Extending byzsgd", "bash")
    (tmp_path / "my_plugin.py").write_text(plugin)
    commands = [line.split("#")[0] for line in shell.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(c) for c in commands if c.strip()]
    assert [c[:2] for c in commands] == [["byzsgd", "run"], ["byzsgd", "run"]]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "byzsgd.cli", *command[1:], "--quiet"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    record = load_toml(tmp_path / "runs" / "mine" / "config.toml")
    assert (record["dataset"], record["model"], record["aggregator"], record["attack"]) == (
        "my-rows", "my-norm-mlp", "my-trim", "my-flip")
    assert record["plugins"] == [str(tmp_path / "my_plugin.py")]
    assert read_json(tmp_path / "runs" / "mine" / "summary.json")["status"] == "complete"

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(objects, str(README), "exec"), namespace)
    summary = namespace["summary"]
    assert isinstance(summary, dict) and summary["status"] == "complete"
    record = load_toml(tmp_path / "runs" / "objects" / "config.toml")
    assert record["model"] == "__main__:small_mlp"
    assert record["aggregator"] == "__main__:coordinate_median"
    assert record["attack"] == "sign-flip"


def test_unregistered_objects_get_their_qualified_names() -> None:
    import functools

    from byzsgd import aggregators, attacks
    from byzsgd.api import _attack_fields, _rule_name, qualified

    class Scaled(attacks.ClassicAttack):
        name = "scaled-not-registered"
        summary = "scale * mean(honest)"
        supported_knowledge = ("omniscient",)
        constraints = {"scale": [float]}  # noqa: RUF012

        def __init__(self, *, scale=1.0, knowledge=None):  # type: ignore[no-untyped-def]
            super().__init__(knowledge=knowledge)
            self.scale = scale

        def forge(self, ctx):  # type: ignore[no-untyped-def]
            return ctx.rows(ctx.need_honest().mean(dim=0) * self.scale)

    fields = _attack_fields(Scaled(scale=3.0))
    here = f"{__name__}:test_unregistered_objects_get_their_qualified_names.<locals>"
    assert fields == {"attack": f"{here}.Scaled", "attack_params": {"scale": 3.0},
                      "knowledge": "omniscient"}
    rebuilt = attacks.get(fields["attack"], **fields["attack_params"])
    assert isinstance(rebuilt, Scaled) and rebuilt.params == {"scale": 3.0,
                                                              "knowledge": "omniscient"}
    assert "scaled-not-registered" not in attacks.names()

    def trimmed(gradients, f, *, k=1):  # type: ignore[no-untyped-def]
        return gradients.mean(dim=0)

    assert qualified(functools.partial(trimmed, k=2)) == f"{here}.trimmed(k=2)"
    name = _rule_name(functools.partial(trimmed, k=2))
    assert name == f"{here}.trimmed(k=2)" and name in aggregators.names()
    assert _rule_name(aggregators.spec("median").function) == "median"


def test_list_shows_a_plugins_names(tmp_path: Path, plugin: Path) -> None:
    done = byzsgd("list", "--plugin", str(plugin))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("plug-tab", "plug-norm", "plug-trim", "plug-shift"):
        assert name in done.stdout
    done = byzsgd("list", "--plugin", "no_such_plugin_xyz")
    assert done.returncode == 2 and "plugin 'no_such_plugin_xyz'" in done.stderr
