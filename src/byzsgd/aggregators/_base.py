"""What every rule shares: the result type and input validation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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

    The returned tensor is the input itself when it already is float32/float64 and contiguous
    (rules never write into it).
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
    if gradients.device.type != "cpu":
        gradients = gradients.cpu()
    return gradients.contiguous()


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
