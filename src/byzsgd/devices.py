"""Which torch device a run uses: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA
when this machine has it, else the CPU), resolved and checked before anything is built.

Runs on one device type are deterministic (same seed, same numbers); a CPU run and a CUDA run
of the same config differ in floating point (other kernels, other summation orders)."""

from __future__ import annotations

import re

#: What the ``device`` field accepts, in words (for messages).
ACCEPTED = "cpu, cuda, cuda:N, mps or auto"

_SPEC = re.compile(r"^(cpu|auto|mps|cuda)(?::(\d+))?$")


class DeviceError(ValueError):
    """A device that is not written as :data:`ACCEPTED`, or that this machine does not have."""


def parse(spec: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; :class:`DeviceError` for anything not in
    :data:`ACCEPTED` (checked without torch)."""
    match = _SPEC.match(spec.strip().lower()) if isinstance(spec, str) else None
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise DeviceError(f"device must be one of {ACCEPTED}, got {spec!r}")
    index = match.group(2)
    return match.group(1), None if index is None else int(index)


def resolve(spec: str):  # -> torch.device
    """The torch device ``spec`` names on this machine; :class:`DeviceError` with the reason
    when it does not exist here (no CUDA in this torch build, no such GPU index, no MPS)."""
    import torch

    kind, index = parse(spec)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device {spec!r}: MPS is not available on this machine")
        return torch.device("mps")
    if not torch.cuda.is_available():
        build = ("built without CUDA" if torch.version.cuda is None
                 else f"built for CUDA {torch.version.cuda}, but no GPU is visible")
        raise DeviceError(f"device {spec!r}: CUDA is not available here (torch "
                          f"{torch.__version__} {build}); use device = cpu or auto")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise DeviceError(f"device {spec!r} does not exist: this machine has {count} CUDA "
                          f"device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", 0 if index is None else index)
