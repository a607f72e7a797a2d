"""Config fields as command-line flags: one ``--flag`` per field of
:class:`~byzsgd.config.ExperimentConfig`, and the config a parsed command line stands for.

Shared by ``byzsgd run``/``sweep`` (:mod:`byzsgd.cli`) and every process of a distributed run
(:mod:`byzsgd.distributed.node`), so it sits below both."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields
from typing import Any

from byzsgd.config import ExperimentConfig


def _field_type(annotation: Any) -> Any:
    """The scalar type of a resolved config field annotation: ``int | None`` -> ``int``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def field_types() -> dict[str, Any]:
    """Each config field's scalar type (``typing.get_type_hints``, no ``eval``)."""
    hints = typing.get_type_hints(ExperimentConfig)
    return {f.name: _field_type(hints[f.name]) for f in fields(ExperimentConfig)}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (``--batch-size``), defaulting to 'not given' so that a
    config file's values stand unless overridden; plus the repeatable K=V parameter flags."""
    group = parser.add_argument_group("experiment (override the config file)")
    kinds = field_types()
    for f in fields(ExperimentConfig):
        kind = kinds[f.name]
        if typing.get_origin(kind) in (dict, list) or kind in (dict, list):
            continue
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(flag, dest=f.name, type=kind, default=argparse.SUPPRESS,
                           choices=f.metadata.get("choices"), help=f.metadata.get("help"))
    group.add_argument("--aggregator-param", action="append", default=[], metavar="KEY=VALUE",
                       help="rule parameter, repeatable (e.g. --aggregator-param m=5)")
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
    return values


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config of ``--config FILE`` (if given) overridden by the flags."""
    overrides = config_overrides(args)
    if args.config:
        return ExperimentConfig.from_toml(args.config, overrides)
    return ExperimentConfig.from_dict(overrides)
