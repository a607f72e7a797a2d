"""What every rule shares: the result type and input validation (the front door)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from byzsgd.constraints import Constraint, Interval


@dataclass(frozen=True)
class Aggregation:
    """The output of a rule, with the rows it selected when it is selection-based.

    ``selected`` holds the row indices (int64, sorted ascending) whose vectors entered the
    output: Krum's single winner, Multi-Krum's m best, Brute's subset, Bulyan's selection set,
    the Medoid. ``None`` for rules that do not select whole rows (mean, median, ...).
    """

    value: Tensor
    selected: Tensor | None = None


def as_gradients(gradients: Tensor, rule: str) -> Tensor:
    """Check that ``gradients`` is an (n, d) floating tensor; half precision is promoted.

    Any device: the rules compute where their input is (the compiled kernels on CPU
    float32/float64, the torch kernels elsewhere, :mod:`byzsgd.kernels`) and never move it.
    float16 and bfloat16 rows are promoted to float32 on their device (their 11 or 8 bits of
    mantissa cannot hold a sum of n gradients or a squared distance), so a rule given half
    precision returns float32; float32 and float64 are kept. The returned tensor is the input
    itself when it already is float32/float64 and contiguous (rules never write into it).
    """
    if not isinstance(gradients, Tensor):
        raise TypeError(f"{rule}: gradients must be a torch.Tensor of shape (n, d), "
                        f"got {type(gradients).__name__}")
    if gradients.dim() != 2:
        raise ValueError(f"{rule}: gradients must have shape (n, d) (one row per worker), "
                         f"got shape {tuple(gradients.shape)}")
    if gradients.shape[0] < 1:
        raise ValueError(f"{rule}: needs at least one gradient row, got n=0")
    if not gradients.is_floating_point():
        raise TypeError(f"{rule}: gradients must be a floating tensor, got {gradients.dtype}")
    if gradients.dtype not in (torch.float32, torch.float64):
        gradients = gradients.to(torch.float32)
    return gradients.contiguous()


def as_matrix(gradients: object, rule: str) -> tuple[Tensor, Callable[[Tensor], Any]]:
    """The (n, d) matrix a rule computes on, and the map from its (d,) result back to the
    structure of one worker's input.

    ``gradients`` is an (n, d) tensor (returned as is, the map is the identity), a list or
    tuple of n per-worker tensors of one shape (each flattened; the result takes that shape),
    or a list or tuple of n per-worker dicts ``{name: tensor}`` with the same keys and shapes
    (each flattened in sorted key order and concatenated; the result is a dict of the same
    keys and shapes). No data changes device here.
    """
    if isinstance(gradients, Tensor):
        return gradients, _identity
    if not isinstance(gradients, (list, tuple)):
        raise TypeError(f"{rule}: gradients must be a torch.Tensor of shape (n, d), a list of "
                        f"per-worker tensors or a list of per-worker dicts of tensors, got "
                        f"{type(gradients).__name__}")
    if not gradients:
        raise ValueError(f"{rule}: needs at least one gradient row, got n=0")
    first = gradients[0]
    if isinstance(first, Mapping):
        return _from_dicts(gradients, rule)
    shape = _worker_tensor(first, rule, 0).shape
    rows = []
    for i, g in enumerate(gradients):
        t = _worker_tensor(g, rule, i)
        if t.shape != shape:
            raise ValueError(f"{rule}: every worker's tensor must have the shape of worker "
                             f"0's {tuple(shape)}, worker {i} sent {tuple(t.shape)}")
        rows.append(t.reshape(-1))
    return torch.stack(rows), lambda value: value.reshape(shape)


def _identity(value: Tensor) -> Tensor:
    return value


def _worker_tensor(value: object, rule: str, i: int, key: str | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        where = f"worker {i}" + ("" if key is None else f", key {key!r}")
        raise TypeError(f"{rule}: {where}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def _from_dicts(gradients: list[Any] | tuple[Any, ...],
                rule: str) -> tuple[Tensor, Callable[[Tensor], dict[str, Tensor]]]:
    first = gradients[0]
    if not all(isinstance(k, str) for k in first):
        raise TypeError(f"{rule}: per-worker dicts must have str keys (parameter names)")
    keys = sorted(first)
    if not keys:
        raise ValueError(f"{rule}: per-worker dicts must hold at least one tensor")
    shapes = {k: _worker_tensor(first[k], rule, 0, k).shape for k in keys}
    rows = []
    for i, g in enumerate(gradients):
        if not isinstance(g, Mapping) or set(g) != set(keys):
            got = sorted(g) if isinstance(g, Mapping) else type(g).__name__
            raise ValueError(f"{rule}: every worker must send a dict with worker 0's keys "
                             f"{keys}, worker {i} sent {got}")
        parts = []
        for k in keys:
            t = _worker_tensor(g[k], rule, i, k)
            if t.shape != shapes[k]:
                raise ValueError(f"{rule}: {k!r} must have worker 0's shape "
                                 f"{tuple(shapes[k])}, worker {i} sent {tuple(t.shape)}")
            parts.append(t.reshape(-1))
        rows.append(torch.cat(parts))
    sizes = [shapes[k].numel() for k in keys]

    def unflatten(value: Tensor) -> dict[str, Tensor]:
        return {k: part.reshape(shapes[k])
                for k, part in zip(keys, torch.split(value, sizes), strict=True)}

    return torch.stack(rows), unflatten


#: The norm of a distance rule's geometry: p >= 1, ``inf`` for the max-norm.
P_NORM: list[Constraint] = [Interval(Real, 1, math.inf, closed="both")]


def check_f(rule: str, n: int, f: int) -> None:
    """``f`` must be a non-negative integer."""
    if isinstance(f, bool) or not isinstance(f, int):
        raise TypeError(f"{rule}: f must be an int, got {type(f).__name__}")
    if f < 0:
        raise ValueError(f"{rule}: f must be >= 0, got f={f}")


def require(rule: str, ok: bool, constraint: str, n: int, f: int, **extra: object) -> None:
    """Raise ``ValueError('<rule> needs <constraint>, got n=.., f=..')`` unless ``ok``."""
    if not ok:
        got = ", ".join([f"n={n}", f"f={f}", *(f"{k}={v}" for k, v in extra.items())])
        raise ValueError(f"{rule} needs {constraint}, got {got}")


def finite_rows(gradients: Tensor) -> Tensor:
    """Boolean mask (n,) of rows holding only finite values."""
    return torch.isfinite(gradients).all(dim=1)
