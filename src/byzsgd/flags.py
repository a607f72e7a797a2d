"""Config fields as command-line flags: one ``--flag`` per field of
:class:`~byzsgd.config.ExperimentConfig`, and the config a parsed command line stands for.

Shared by ``byzsgd run``/``sweep`` (:mod:`byzsgd.cli`) and every process of a distributed run
(:mod:`byzsgd.distributed.node`), so it sits below both."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from byzsgd.config import CONSTRAINTS, ExperimentConfig, Options, field_types


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (``--batch-size``), defaulting to 'not given' so that a
    config file's values stand unless overridden; plus the repeatable K=V parameter flags."""
    group = parser.add_argument_group("experiment (override the config file)")
    kinds = field_types()  # from the annotations (typing.get_type_hints, no eval)
    for f in fields(ExperimentConfig):
        kind, _ = kinds[f.name]
        if kind not in (int, float, str):  # tables and lists: the K=V flags below, or TOML
            continue
        rule = CONSTRAINTS[f.name]
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(flag, dest=f.name, type=kind, default=argparse.SUPPRESS,
                           choices=rule.values if isinstance(rule, Options) else None,
                           help=f.metadata.get("help"))
    group.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="import MODULE (a module name, or the path of a .py file) before "
                       "the config is resolved: it registers rules, attacks, models or data "
                       "sets; repeatable, added to the config's plugins list")
    group.add_argument("--aggregator-param", action="append", default=[], metavar="KEY=VALUE",
                       help="rule parameter, repeatable (e.g. --aggregator-param m=5)")
    group.add_argument("--pre-aggregator", action="append", default=[],
                       metavar="NAME[:K=V,...]", help="pre-aggregator before the rule, "
                       "repeatable, in order (e.g. --pre-aggregator nnm --pre-aggregator "
                       "bucketing:s=2)")
    group.add_argument("--attack-param", action="append", default=[], metavar="KEY=VALUE",
                       help="attack parameter, repeatable (e.g. --attack-param epsilon=0.1)")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given as flags (the parameter flags parsed as ``K=V``)."""
    from byzsgd._params import parse_params

    values = {f.name: getattr(args, f.name) for f in fields(ExperimentConfig)
              if hasattr(args, f.name)}
    if getattr(args, "aggregator_param", None):
        values["aggregator_params"] = parse_params(args.aggregator_param)
    if getattr(args, "attack_param", None):
        values["attack_params"] = parse_params(args.attack_param)
    if getattr(args, "plugin", None):
        values["plugins"] = list(args.plugin)
    if getattr(args, "pre_aggregator", None):
        values["pre_aggregators"] = [parse_pre_aggregator(p) for p in args.pre_aggregator]
    return values


def parse_pre_aggregator(text: str) -> str | dict[str, dict[str, object]]:
    """``nnm`` -> ``"nnm"``; ``bucketing:s=2`` -> ``{"bucketing": {"s": 2}}``."""
    from byzsgd._params import parse_params

    name, sep, rest = text.partition(":")
    if not sep:
        return name.strip()
    return {name.strip(): parse_params([p for p in rest.split(",") if p.strip()])}


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config of ``--config FILE`` (if given) overridden by the flags."""
    overrides = with_file_plugins(config_overrides(args), args.config)
    if args.config:
        config = ExperimentConfig.from_toml(args.config, overrides)
    else:
        config = ExperimentConfig.from_dict(overrides)
    config.load_plugins()  # imported before anything reads a name
    return config


def with_file_plugins(overrides: dict[str, Any], path: str | None) -> dict[str, Any]:
    """``overrides`` with ``--plugin`` modules added after the config file's ``plugins``
    (instead of replacing them)."""
    if "plugins" not in overrides or not path:
        return overrides
    from byzsgd.config import load_toml

    listed = load_toml(path).get("plugins", [])
    if not isinstance(listed, list):
        return overrides  # the field check names the mistake
    return {**overrides, "plugins": [*listed, *overrides["plugins"]]}


# -- argparse types of the command-level options -----------------------------------------------

def out_dir(text: str) -> str:
    """``--out``: a results folder; not empty, and not an existing file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


#: ``--jobs``, ``--threads``, ...: an int >= 1; ``--node-rank``: an int >= 0.
positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``: comma-separated ints >= 0."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 0, got "
                                         f"{text!r}") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    return seeds
