"""The experiment configuration: one typed record, from TOML and/or flags, validated before
anything runs, written back fully resolved next to the results."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from byzsgd.constraints import Interval, Options, Satisfies

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODES = ("gradient", "model-averaging")
SCHEDULES = ("constant", "fading")
BACKDOORS = ("none", "sample", "pattern")
INPUTS = ("raw", "standardized")
SELECTIONS = ("random", "fixed")
KNOWLEDGE = ("own", "omniscient")


class ConfigError(ValueError):
    """An invalid configuration; the message names the field and the constraint."""


#: A string that is not empty.
NONEMPTY = Satisfies(lambda v: isinstance(v, str) and len(v) >= 1, "a non-empty string")
#: Numbers > 0, and numbers in [0, 1).
POSITIVE = Interval(Real, 0, None, closed="neither")
FRACTION = Interval(Real, 0, 1, closed="left")


def _at_least(low: int) -> Interval:
    return Interval(Integral, low, None, closed="left")


#: What each config field accepts beyond its annotated type, which :func:`check_fields` reads
#: from the annotation (``int``: an int, not a bool; ``float``: a finite int or float; ``str``;
#: ``dict``: a table with string keys; ``X | None``: also None), in the forms of
#: :mod:`byzsgd.constraints` (the rules' and attacks' parameters use the same). Every field
#: has an entry.
CONSTRAINTS: dict[str, Interval | Options | Satisfies | None] = {
    "dataset": NONEMPTY, "data_dir": NONEMPTY, "model": NONEMPTY, "inputs": Options(INPUTS),
    "workers": _at_least(1), "byzantine": _at_least(0), "declared_f": _at_least(0),
    "aggregator": NONEMPTY, "aggregator_params": None, "pre_aggregators": None,
    "attack": NONEMPTY,
    "attack_params": None, "selection": Options(SELECTIONS), "knowledge": Options(KNOWLEDGE),
    "attack_start": _at_least(0), "attack_stop": _at_least(0), "mode": Options(MODES),
    "local_steps": _at_least(1), "servers": _at_least(1), "rounds": _at_least(1),
    "batch_size": _at_least(1), "lr": POSITIVE,
    "lr_schedule": Options(SCHEDULES), "lr_fading": POSITIVE,
    "momentum": FRACTION, "weight_decay": Interval(Real, 0, None, closed="left"),
    "worker_momentum": FRACTION,
    "partition": NONEMPTY, "partition_alpha": POSITIVE,
    "shards_per_worker": _at_least(1), "backdoor": Options(BACKDOORS),
    "eval_every": _at_least(1), "eval_train_samples": _at_least(1),
    "seed": Interval(Integral, 0, 2**63 - 1), "plugins": None, "device": NONEMPTY,
}


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ExperimentConfig:
    """Everything that defines one run. Field help texts double as the CLI's ``--help``."""

    dataset: str = _f("mnist-5k", "data set name (see `byzsgd list`)")
    data_dir: str | None = _f(None, "directory holding data files (else $BYZSGD_DATA_DIR, "
                                    "else the user cache)")
    model: str = _f("mlp", "model name (see `byzsgd list`)")
    inputs: str = _f("raw", "raw: pixel intensities in [0, 1]; standardized: minus the "
                            "training set's per-channel mean, over its standard deviation")
    workers: int = _f(25, "n: number of workers, Byzantine ones included")
    byzantine: int = _f(5, "f: number of Byzantine workers (q of the generalized model)")
    declared_f: int | None = _f(None, "f the rule is told to tolerate (default: --byzantine)")
    aggregator: str = _f("mean", "aggregation rule (see `byzsgd list`)")
    aggregator_params: dict[str, Any] = field(default_factory=dict,
                                              metadata={"help": "rule parameters"})
    pre_aggregators: list[Any] = field(
        default_factory=list, metadata={"help": "pre-aggregators applied before the rule, in "
                                        "order: names or {name = {params}} tables (nnm, "
                                        "bucketing, clipping, arc)"})
    attack: str = _f("none", "attack name, or none (see `byzsgd list`)")
    attack_params: dict[str, Any] = field(default_factory=dict,
                                          metadata={"help": "attack parameters"})
    selection: str = _f("random", "which workers are Byzantine: random (redrawn every round) "
                                  "or fixed (the last f)")
    knowledge: str | None = _f(None, "what the attacker reads: own (its workers' honest "
                                     "gradients) or omniscient (all honest gradients); default: "
                                     "the attack's own default")
    attack_start: int = _f(0, "first round with the attack on")
    attack_stop: int | None = _f(None, "first round with the attack off again (default: never)")
    mode: str = _f("gradient", "gradient: workers send gradients (Alg. 1 of Fall of Empires); "
                               "model-averaging: workers train locally and send parameters "
                               "(Alg. 1 of A Little Is Enough)")
    local_steps: int = _f(1, "local SGD steps per round in model-averaging mode")
    servers: int = _f(1, "parameter servers, each aggregating its own contiguous shard of "
                         "the parameters (Generalized Byzantine-tolerant SGD 5.5)")
    rounds: int = _f(300, "number of rounds (server steps)")
    batch_size: int = _f(32, "minibatch size per worker")
    lr: float = _f(0.1, "learning rate (eta_0 for the fading schedule)")
    lr_schedule: str = _f("constant", "constant, or fading: eta_0 * r / (epoch + r) "
                                      "(Hidden Vulnerability 5.1)")
    lr_fading: float = _f(10000.0, "r of the fading schedule")
    momentum: float = _f(0.0, "server SGD momentum")
    weight_decay: float = _f(0.0, "L2 regularization (server SGD weight decay)")
    worker_momentum: float = _f(0.0, "beta in [0, 1): each honest worker sends its momentum "
                                     "m_i <- beta m_i + (1 - beta) g_i instead of its gradient "
                                     "g_i, and the attacks see momenta (Karimireddy, He, Jaggi "
                                     "2021, Learning from History; Farhadkhani et al. 2022; "
                                     "ByzFL); 0: off. Gradient mode only")
    partition: str = _f("iid", "how training data is split among workers: iid, dirichlet, "
                               "shards")
    partition_alpha: float = _f(1.0, "Dirichlet concentration for --partition dirichlet")
    shards_per_worker: int = _f(2, "label-sorted shards per worker for --partition shards")
    backdoor: str = _f("none", "backdoor task measured (and attacked by alie-backdoor): "
                               "sample or pattern (A Little Is Enough 4.2)")
    eval_every: int = _f(50, "evaluate (and checkpoint) every this many rounds")
    eval_train_samples: int = _f(5000, "training samples used to measure train loss")
    seed: int = _f(0, "random seed: the same config and seed give the same numbers")
    plugins: list[str] = field(
        default_factory=list, metadata={"help": "modules imported before the config is "
                                        "resolved (module names or .py paths), which register "
                                        "rules, attacks, models or data sets"})
    device: str = _f("cpu", "where the run computes: cpu, cuda, cuda:N, mps, or auto (cuda "
                     "when available, else cpu); CPU and CUDA runs differ in floating point")

    def __post_init__(self) -> None:
        # A plugin file is recorded by its absolute path, so that the run resumes from anywhere.
        if isinstance(self.plugins, list) and all(isinstance(p, str) and p.strip()
                                                  for p in self.plugins):
            from byzsgd import plugins

            self.plugins = plugins.merge(self.plugins)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """Build from a mapping (e.g. parsed TOML); unknown keys are an error."""
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}; known fields: "
                              f"{', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None
                  ) -> ExperimentConfig:
        values = load_toml(path)
        values.update(overrides or {})
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; ``plugins`` only when there are some, ``device`` only
        when not ``cpu`` and ``worker_momentum`` only when not 0 (so that the records of
        earlier runs stay as they were)."""
        values = dataclasses.asdict(self)
        if values["worker_momentum"] == 0:  # the default: off
            del values["worker_momentum"]
        if not values["plugins"]:
            del values["plugins"]
        if values["device"] == "cpu":  # the default: records stay as they were before it
            del values["device"]
        return values

    def to_json(self) -> dict[str, Any]:
        """The config as a run's summary.json stores it (tuples as lists, non-finite floats
        as None): what finished runs are compared against."""
        from byzsgd.results import json_safe

        return json_safe(json.loads(json.dumps(self.to_dict())))

    @property
    def rule_f(self) -> int:
        return self.byzantine if self.declared_f is None else self.declared_f

    def load_plugins(self) -> None:
        """Import the config's plugins (once per process); ``ConfigError`` naming the plugin
        that cannot be imported."""
        from byzsgd import plugins

        value = self.plugins
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ConfigError(f"plugins must be a list of module names or .py paths, got "
                              f"{value!r} ({type(value).__name__})")
        try:
            plugins.load(value)
        except plugins.PluginError as e:
            raise ConfigError(str(e)) from None

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> ExperimentConfig:
        """Check every field and cross-field constraint that can be checked without data; the
        experiment checks the rest (batch size vs shard size, model vs data shape) before
        training. Raises :class:`ConfigError`."""
        from byzsgd import aggregators, attacks, data, devices, models

        check_fields(self)
        try:
            devices.resolve(self.device)
        except devices.DeviceError as e:
            raise ConfigError(str(e)) from None
        self.load_plugins()  # before any name is looked up
        if not self.byzantine <= self.workers:
            raise ConfigError(f"byzantine must satisfy 0 <= f <= n (workers), got "
                              f"f={self.byzantine}, n={self.workers}")
        if self.attack_stop is not None and self.attack_stop < self.attack_start:
            raise ConfigError(f"attack window needs 0 <= attack_start <= attack_stop, got "
                              f"attack_start={self.attack_start}, attack_stop={self.attack_stop}")
        for name, known in (("dataset", data.names()), ("model", models.names())):
            if getattr(self, name) not in known:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; known: "
                                  f"{', '.join(known)}")
        if self.partition not in data.SCHEMES:
            raise ConfigError(f"partition must be one of {', '.join(data.SCHEMES)}, got "
                              f"{self.partition!r}")
        try:
            aggregators.check(self.aggregator, self.workers, self.rule_f,
                              **self.aggregator_params)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"aggregator: {e}") from None
        try:  # the chain: pre-aggregators, and parameters a bound rule sets itself
            aggregators.bind(self.aggregator, self.rule_f, pre=self.pre_aggregators,
                             **self.aggregator_params).check(self.workers)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"pre_aggregators: {e}" if self.pre_aggregators
                              else f"aggregator: {e}") from None
        if self.attack != "none":
            if self.attack not in attacks.names():
                raise ConfigError(f"unknown attack {self.attack!r}; known: none, "
                                  f"{', '.join(attacks.names())}")
            params = dict(self.attack_params)
            if self.knowledge is not None:
                params["knowledge"] = self.knowledge
            try:
                attack = attacks.get(self.attack, **params)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"attack: {e}") from None
            if self.byzantine == 0 and not getattr(attack, "dimensional", False):
                raise ConfigError(f"attack {self.attack!r} needs byzantine >= 1")
            if self.attack == "alie-backdoor" and self.backdoor == "none":
                raise ConfigError("attack alie-backdoor needs a backdoor task: set backdoor "
                                  "to sample or pattern")
        if self.servers > 1 and self.mode != "gradient":
            raise ConfigError("servers > 1 (sharded parameter servers) needs mode = gradient")
        if self.worker_momentum and self.mode != "gradient":
            raise ConfigError(f"worker_momentum={self.worker_momentum} needs mode = gradient: "
                              f"in model-averaging mode the workers send parameters, and a "
                              f"momentum of parameters is not the momentum of Learning from "
                              f"History; set worker_momentum = 0 or mode = gradient")
        return self


def field_types() -> dict[str, tuple[type, bool]]:
    """Each config field's type and whether it may be None, from its annotation."""
    hints = typing.get_type_hints(ExperimentConfig)
    out = {}
    for f in fields(ExperimentConfig):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args
        if optional:
            hint = next(a for a in args if a is not type(None))
        out[f.name] = (typing.get_origin(hint) or hint, optional)
    return out


_KIND = {int: "an int", float: "a finite number", str: "a string",
         dict: "a table of parameters (string keys)", list: "a list"}


def describe(name: str) -> str:
    """What field ``name`` accepts, in words: ``an int in [1, inf)``, ``one of 'raw',
    'standardized'``."""
    kind, optional = field_types()[name]
    rule = CONSTRAINTS[name]
    text = _KIND.get(kind, kind.__name__) if rule is None else rule.describe()
    return text + (" or None" if optional else "")


def _accepts(kind: type, value: Any) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, kind)


def check_fields(config: ExperimentConfig) -> None:
    """Check every field's type and range (:data:`CONSTRAINTS`); the message names the field,
    what it accepts and what it got: ``workers must be an int >= 1, got '5' (str)``."""
    for name, (kind, optional) in field_types().items():
        value = getattr(config, name)
        if value is None and optional:
            continue
        rule = CONSTRAINTS[name]
        ok = value is not None and _accepts(kind, value) and (rule is None
                                                               or rule.accepts(value))
        if not ok:
            raise ConfigError(f"{name} must be {describe(name)}, got {value!r} "
                              f"({type(value).__name__})")


#: The tables a config file may hold besides the fields: ``[experiment]`` (the fields, else
#: they are at the top level), ``[sweep]`` (``byzsgd sweep``), ``[reproduce]`` (``byzsgd
#: reproduce``). A run reads the fields only.
TABLES = ("experiment", "sweep", "reproduce")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config's fields: its ``[experiment]`` table, else its top level."""
    if Path(path).is_dir():
        raise ConfigError(f"config file {path} is a folder, not a TOML file")
    try:
        with open(path, "rb") as fh:
            values = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return experiment_table(values, path)


def experiment_table(values: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The config fields of a parsed TOML file: its ``[experiment]`` table, with nothing
    else at the top level but the other :data:`TABLES`; without that table, the top level
    less those tables."""
    if "experiment" not in values:
        return {k: v for k, v in values.items() if k not in TABLES}
    if not isinstance(values["experiment"], dict):
        raise ConfigError(f"{path}: experiment must be a table ([experiment]), got "
                          f"{values['experiment']!r}")
    stray = [k for k in values if k not in TABLES]
    if stray:
        raise ConfigError(f"{path}: {', '.join(stray)} outside the [experiment] table: with "
                          f"an [experiment] table, config fields go in it, and the only other "
                          f"tables are {', '.join(f'[{t}]' for t in TABLES[1:])}")
    return dict(values["experiment"])


def to_toml(values: dict[str, Any]) -> str:
    """Serialize a flat config (scalars, None, and one level of tables) as TOML. ``None``
    fields are written as comments, since TOML has no null."""
    scalars, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is None:
            scalars.append(f"# {key} = (unset)")
        else:
            scalars.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(scalars) + "\n"
    for key, table in tables:
        out += f"\n[{key}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value != value:
            return "nan"
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")
