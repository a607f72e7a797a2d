"""What the launcher and the per-process entry point (:mod:`.node`) share: the time limits of
:class:`~byzsgd.distributed.protocol.Options` as flags, and the variable that tells a process
its torch thread count. Importing this module does not import torch."""

from __future__ import annotations

import argparse
import math

#: Intra-op threads of this process (the launcher shares the cores among the processes).
THREADS = "BYZSGD_THREADS"


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in [1, 65535], got {text!r}")
    return value


def add_timeout_flags(group: argparse._ActionsContainer) -> None:
    """The time limits of :class:`~byzsgd.distributed.protocol.Options` as flags."""
    group.add_argument("--deadline", type=seconds, default=60.0,
                       help="seconds a server waits for the workers' vectors in a round "
                            "before treating the missing ones as absent (default 60)")
    group.add_argument("--connect-timeout", type=seconds, default=120.0,
                       help="seconds to wait for every process to join (default 120)")
    group.add_argument("--idle-timeout", type=seconds, default=1800.0,
                       help="seconds a worker waits for its server's next message (default "
                            "1800)")
