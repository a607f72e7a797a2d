"""Attacks in the generalized Byzantine model (Xie et al., Generalized Byzantine-tolerant SGD,
Definition 4): individual values anywhere in the (n, d) matrix of received vectors are
replaced, so every row may be partly Byzantine. Section 5.4 (bit-flip) and 5.5 (gambler).

Both are "realistic" attackers (5.4) that read nothing but the values they corrupt: their
``knowledge`` is ``"none"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral, Real
from typing import ClassVar

import torch
from torch import Tensor

from byzsgd.constraints import Constraints, Interval, Items

from ._base import FINITE, DimensionalAttack, check_int
from ._registry import register


def flip_mask(bits: Iterable[int]) -> int:
    """The signed int32 with the given bits set (1-based from the least-significant bit)."""
    mask = 0
    for b in bits:
        mask |= 1 << (b - 1)
    return mask - (1 << 32) if mask >= 1 << 31 else mask


def flip_bits(values: Tensor, bits: Iterable[int]) -> Tensor:
    """``values`` with the given ``bits`` of their IEEE-754 float32 representation flipped.

    Bits are numbered from 1 at the least-significant bit of the float32: 1-23 are the
    mantissa, 24-31 the exponent (31 its most significant bit), 32 the sign. So flipping bit
    32 of 1.0 gives -1.0, and flipping bits 22, 30, 31, 32 of 1.0 (0x3F800000 ^ 0xE0200000 =
    0xDFA00000) gives -1.25 * 2^64. Values of another dtype are converted to float32 first
    (the value a worker would send) and the result converted back. Returns a new tensor.
    """
    v = values.detach().to(torch.float32, copy=True).contiguous()
    flipped = torch.bitwise_xor(v.view(torch.int32),
                                torch.tensor(flip_mask(bits), dtype=torch.int32,
                                             device=v.device))
    return flipped.view(torch.float32).to(values.dtype)


@register
class BitFlip(DimensionalAttack):
    """Bit-flip attack (Generalized Byzantine-tolerant SGD, 5.4): for each of the first
    ``coordinates`` coordinates (1000 in the paper; all of them when ``None``; at most d),
    ``per_coordinate`` of the n values (1 of 20 in the paper), in rows drawn at random
    independently per coordinate, have ``bits`` flipped (22, 30, 31 and 32 in the paper;
    numbering as in :func:`flip_bits`: 1-based from the float32's least-significant bit,
    32 = sign, 24-31 = exponent, 1-23 = mantissa)."""

    name = "bit-flip"
    summary = ("flip bits 22,30,31,32 of 1 of the n values of each of the first 1000 "
               "coordinates (Xie et al., Generalized 5.4)")
    supported_knowledge = ("none",)
    #: 1 = least significant bit of the float32, 32 = its sign
    BIT = Interval(Integral, 1, 32, closed="both")
    constraints: ClassVar[Constraints] = {
        "coordinates": [Interval(Integral, 0, None, closed="left"), None],
        "per_coordinate": [Interval(Integral, 0, None, closed="left")],
        "bits": [BIT, Items(BIT, distinct=True)],
    }

    def __init__(self, *, coordinates: int | None = 1000, per_coordinate: int = 1,
                 bits: Iterable[int] | int = (22, 30, 31, 32),
                 knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.coordinates = None if coordinates is None else int(coordinates)
        self.per_coordinate = int(per_coordinate)
        # distinct: a bit flipped twice is unchanged
        self.bits: tuple[int, ...] = tuple(int(b) for b in (
            (bits,) if isinstance(bits, Integral) else bits))

    def corrupt(self, gradients: Tensor,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        n, d = gradients.shape
        q = check_int(self.name, "per_coordinate", self.per_coordinate, maximum=n,
                      constraint=f"per_coordinate <= n={n}")
        k = d if self.coordinates is None else min(self.coordinates, d)
        mask = torch.zeros((n, d), dtype=torch.bool, device=gradients.device)
        if q and k:  # drawn on the CPU (the generator's device), then moved
            rows = torch.rand((n, k), generator=generator, device="cpu").argsort(dim=0)[:q]
            mask[rows.to(mask.device), torch.arange(k, device=mask.device).expand(q, k)] = True
        out = gradients.detach().clone()
        out[mask] = flip_bits(out[mask], self.bits)
        return out, mask


@register
class Gambler(DimensionalAttack):
    """Gambler (Generalized Byzantine-tolerant SGD, 5.5): the coordinates are split evenly
    into ``servers`` contiguous shards (20 in the paper; the first ``d % servers`` shards hold
    one more coordinate, as ``torch.tensor_split``); on the one attacked shard ``server``,
    every received value, from every worker, is multiplied by ``scale`` (-1e20) with
    probability ``probability`` (0.05%), independently."""

    name = "gambler"
    summary = ("on one of 20 parameter servers, multiply each value by -1e20 with "
               "probability 0.05% (Xie et al., Generalized 5.5)")
    supported_knowledge = ("none",)
    constraints: ClassVar[Constraints] = {
        "servers": [Interval(Integral, 1, None, closed="left")],
        "server": [Interval(Integral, 0, None, closed="left")],
        "probability": [Interval(Real, 0, 1, closed="both")],
        "scale": FINITE,
    }

    def __init__(self, *, servers: int = 20, server: int = 0, probability: float = 0.0005,
                 scale: float = -1e20, knowledge: str | None = None) -> None:
        super().__init__(knowledge=knowledge)
        if server >= servers:
            raise ValueError(f"{self.name}: server must satisfy 0 <= server < servers, got "
                             f"server={server}, servers={servers}")
        self.servers = int(servers)
        self.server = int(server)
        self.probability = float(probability)
        self.scale = float(scale)

    def shard(self, d: int) -> tuple[int, int]:
        """The attacked coordinates ``[start, stop)`` of a d-dimensional vector."""
        size, extra = divmod(d, self.servers)
        start = self.server * size + min(self.server, extra)
        return start, start + size + (1 if self.server < extra else 0)

    def corrupt(self, gradients: Tensor,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        n, d = gradients.shape
        start, stop = self.shard(d)
        mask = torch.zeros((n, d), dtype=torch.bool, device=gradients.device)
        drawn = torch.rand((n, stop - start), generator=generator, device="cpu")
        mask[:, start:stop] = (drawn < self.probability).to(mask.device)
        out = gradients.detach().clone()
        out[mask] = out[mask] * self.scale
        return out, mask
