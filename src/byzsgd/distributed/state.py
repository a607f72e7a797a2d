"""State that travels between processes as one message part: a blob of bytes.

The servers and workers exchange more than theta and the momentum buffer: the workers'
momentum buffers (``worker_momentum``), the rule's state across rounds (centered clipping's
previous aggregate, the round counter of the random pre-aggregators) and the attack's (mimic's
estimates and chosen worker). A message has at most three tensor parts, so these travel as a
:func:`pack`-ed dict: ``torch.save`` bytes in a uint8 tensor, read back by :func:`unpack` with
``weights_only=True`` (tensors and plain values only, as checkpoints are read).
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import Tensor


def pack(obj: Any) -> Tensor:
    """``obj`` (tensors, numbers, strings, None, in dicts and lists) as a (1, k) uint8
    tensor."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).reshape(1, -1)


def unpack(blob: Tensor) -> Any:
    """What :func:`pack` packed; ``ValueError`` if ``blob`` is not such bytes."""
    if blob.dtype != torch.uint8:
        raise ValueError(f"a state blob is uint8 bytes, got {blob.dtype}")
    try:
        return torch.load(io.BytesIO(blob.reshape(-1).numpy().tobytes()), weights_only=True)
    except Exception as e:  # torch raises many kinds of error for bad bytes
        raise ValueError(f"a state blob does not unpack: {e}") from None


def rule_state(rule: Any) -> dict[str, Any] | None:
    """The rule's ``state_dict()`` when it keeps state, else None."""
    save = getattr(rule, "state_dict", None)
    return save() if callable(save) else None


def load_rule_state(rule: Any, state: dict[str, Any] | None) -> None:
    load = getattr(rule, "load_state_dict", None)
    if state is not None and callable(load):
        load(state)
