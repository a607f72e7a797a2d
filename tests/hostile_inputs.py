"""Inputs shared by the tests of the field's newer rules and of pre-aggregation: seeded honest
rows with the last f replaced by one hostile value."""

from __future__ import annotations

import torch

F32MAX = torch.finfo(torch.float32).max
HOSTILE = [float("nan"), float("inf"), -float("inf"), 1e20, F32MAX]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def honest_and_hostile(value, n=11, f=3, d=16, seed=0):
    x = torch.randn(n, d, generator=gen(seed))
    x[n - f:] = value
    return x
