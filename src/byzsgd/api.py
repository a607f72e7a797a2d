"""``byzsgd.run``: one experiment from Python, from a config and/or the user's own objects.

    >>> import byzsgd
    >>> summary = byzsgd.run({"rounds": 50}, "runs/x", model=my_factory, dataset=my_data,
    ...                      rule=my_rule, attack=MyAttack(scale=2.0))  # doctest: +SKIP

An object passed here is registered in this process under its qualified name
(``module:qualname``, with its parameters for an instance), or under the name it is already
registered by, and the config names it so: ``config.toml`` never records a wrong name, and a
run of other objects in the same ``out`` is refused on ``resume``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from byzsgd.config import ConfigError, ExperimentConfig, load_toml

#: The config fields an object may stand for.
OBJECT_FIELDS = ("dataset", "model", "aggregator", "attack", "attack_params", "knowledge")


def qualified(obj: Any) -> str:
    """``module:qualname`` of a function or class; for an instance, its type's, with the
    parameters it shows (``functools.partial``: the function's and its arguments; an object
    with its own ``__repr__``: that repr), without spaces."""
    if isinstance(obj, functools.partial):
        args = [repr(a) for a in obj.args] + [f"{k}={v!r}" for k, v in obj.keywords.items()]
        return f"{qualified(obj.func)}({','.join(args)})".replace(" ", "")
    if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) or \
            inspect.isbuiltin(obj):
        return f"{obj.__module__}:{obj.__qualname__}"
    kind = type(obj)
    name = f"{kind.__module__}:{kind.__qualname__}"
    if type(obj).__repr__ is not object.__repr__:
        name += "|" + repr(obj).replace(" ", "")
    return name


def _model_name(factory: Callable[..., Any]) -> str:
    from torch import nn

    from byzsgd import models

    for name in models.names():
        if models.spec(name).factory is factory:
            return name
    if not callable(factory) or isinstance(factory, nn.Module):
        raise ConfigError(f"model must be a factory (input_shape, num_classes) -> nn.Module, "
                          f"got {type(factory).__name__}; pass the function that builds the "
                          f"module, not a module")
    name = qualified(factory)
    models.register(name, summary=f"model factory {name}", replace=True)(factory)
    return name


def _fingerprint(dataset: Any) -> str:
    digest = hashlib.sha256()
    for t in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _dataset_name(dataset: Any) -> str:
    from byzsgd import data

    if not isinstance(dataset, data.Dataset):
        raise ConfigError(f"dataset must be a byzsgd.data.Dataset (e.g. "
                          f"Dataset.from_tensors(x_train, y_train, x_test, y_test)), got "
                          f"{type(dataset).__name__}")
    name = (f"{qualified(type(dataset))}|{dataset.name}|train={tuple(dataset.x_train.shape)}"
            f"|classes={dataset.num_classes}|sha256={_fingerprint(dataset)}").replace(" ", "")
    if name not in data.names():
        data.register(name, summary=f"the Dataset object {dataset.name!r} passed to "
                      f"byzsgd.run")(lambda data_dir, download: dataset)
    return name


def _rule_name(rule: Callable[..., Any]) -> str:
    from byzsgd import aggregators

    if isinstance(rule, str):
        return rule
    for name in aggregators.names():
        if aggregators.spec(name).function is rule:
            return name
    if not callable(rule):
        raise ConfigError(f"rule must be a function rule(gradients, f, **params) -> Tensor, "
                          f"got {type(rule).__name__}")
    name = qualified(rule)
    aggregators.register(name, summary=f"rule {name}", replace=True)(rule)
    return name


def _attack_fields(attack: Any) -> dict[str, Any]:
    from byzsgd import attacks

    if isinstance(attack, str):
        return {"attack": attack}
    if not isinstance(attack, attacks.Attack):
        raise ConfigError(f"attack must be an instance of an byzsgd.attacks.Attack subclass, "
                          f"got {type(attack).__name__}")
    kind = type(attack)
    name = kind.__dict__.get("name")
    if not (isinstance(name, str) and name in attacks.names() and attacks.spec(name) is kind):
        name = qualified(kind)
        if name not in attacks.names() or attacks.spec(name).__bases__ != (kind,):
            sub = type(kind.__name__, (kind,), {"name": name, "__module__": kind.__module__,
                                                "__qualname__": kind.__qualname__})
            attacks.register(sub, replace=True)
    params = dict(attack.params)
    knowledge = params.pop("knowledge", None)
    return {"attack": name, "attack_params": params, "knowledge": knowledge}


def as_config(config: ExperimentConfig | dict[str, Any] | str | Path | None) -> ExperimentConfig:
    """A config from a dataclass, a dict of fields or the path of a TOML file."""
    if config is None:
        return ExperimentConfig()
    if isinstance(config, ExperimentConfig):
        return config.replace()
    if isinstance(config, dict):
        return ExperimentConfig.from_dict(config)
    if isinstance(config, (str, Path)):
        return ExperimentConfig.from_toml(config)
    raise ConfigError(f"config must be an ExperimentConfig, a dict of fields or the path of a "
                      f"TOML file, got {type(config).__name__}")


def _refuse_other_objects(out: Path, config: ExperimentConfig, given: set[str]) -> None:
    record = out / "config.toml"
    if not record.exists():
        return
    old = load_toml(record)
    new = config.to_dict()
    for field in OBJECT_FIELDS:
        if field in given and old.get(field) != new.get(field):
            raise ConfigError(f"--resume: {out} was run with {field} = {old.get(field)!r}, "
                              f"but this call passes {field} = {new.get(field)!r}; pass the "
                              f"same object(s) to resume, or use another out (or "
                              f"overwrite=True) to start over")


def run(config: ExperimentConfig | dict[str, Any] | str | Path | None = None,
        out: str | Path = "runs/run", *, model: Callable[..., Any] | None = None,
        dataset: Any = None, rule: Any = None, attack: Any = None, resume: bool = False,
        overwrite: bool = False, quiet: bool = True, **changes: Any) -> dict[str, Any]:
    """Run one experiment and return its summary (what ``summary.json`` holds).

    ``config`` is an :class:`~byzsgd.config.ExperimentConfig`, a dict of its fields or the
    path of a TOML file (default: the default config); ``changes`` set fields on top. The
    objects replace the config's names: ``model`` a factory ``(input_shape, num_classes) ->
    nn.Module``, ``dataset`` a :class:`~byzsgd.data.Dataset`, ``rule`` a function
    ``rule(gradients, f, **params)`` (or a registered name), ``attack`` an
    :class:`~byzsgd.attacks.Attack` instance (its parameters are recorded as
    ``attack_params``). ``resume``, ``overwrite``: as for ``byzsgd run``; resuming with other
    objects than the run's raises :class:`~byzsgd.config.ConfigError`.
    """
    from byzsgd.experiment import run as run_config

    cfg = as_config(config)
    cfg.load_plugins()
    values: dict[str, Any] = dict(changes)
    if model is not None:
        values["model"] = _model_name(model)
    if dataset is not None:
        values["dataset"] = _dataset_name(dataset)
    if rule is not None:
        values["aggregator"] = _rule_name(rule)
    if attack is not None:
        values.update(_attack_fields(attack))
    unknown = sorted(set(values) - set(ExperimentConfig.field_names()))
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
    cfg = cfg.replace(**values)
    out = Path(out)
    if resume:
        _refuse_other_objects(out, cfg, {k for k in values if k in OBJECT_FIELDS})
    return run_config(cfg, out, resume=resume, overwrite=overwrite, quiet=quiet)
