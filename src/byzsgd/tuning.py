"""Process tuning for byzsgd's hot loops, applied on request: :func:`tune_process`.

Two process-wide settings make training rounds faster and steadier; neither changes a number
that byzsgd computes. They are not applied on ``import byzsgd`` (a library must not change its
host process behind the user's back): the ``byzsgd`` command, the processes it launches (sweep
workers, distributed nodes) and the benchmarks call :func:`tune_process` first thing; a library
user calls it once at the top of the program, before importing torch::

    import byzsgd
    byzsgd.tune_process()   # before `import torch`, for the OpenMP setting to take effect
    import torch

- **OpenMP spinning** (:mod:`byzsgd._openmp`): ``GOMP_SPINCOUNT=10000`` lets torch's idle
  OpenMP threads sleep soon after a parallel region instead of busy-waiting for 300,000
  iterations, which would hold the cores byzsgd's compiled kernels run on. Measured on a
  shared 2-core machine: step times of 33-336 ms with the default spinning against a steady
  60-65 ms with it bounded. libgomp reads the variable once, when torch loads it, so it takes
  effect only if torch is not imported yet; it is left alone where the user set
  ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``. Processes started later inherit it.
- **Freed memory kept** (:mod:`byzsgd._memory`): glibc's mmap and trim thresholds raised, so
  the round's large (n, d) tensors are reused from the heap instead of being page-faulted
  afresh every round (30-37 ms -> 20 ms per Krum round measured). Takes effect at any time,
  for allocations made after it; glibc only (a no-op elsewhere).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from byzsgd._memory import keep_freed_memory
from byzsgd._openmp import bound_openmp_spinning

__all__ = ["Tuning", "tune_process"]


@dataclass(frozen=True)
class Tuning:
    """What :func:`tune_process` did in this process."""

    #: ``GOMP_SPINCOUNT``'s value now (set here or by the user), None if unset.
    spin_count: str | None
    #: True if ``GOMP_SPINCOUNT`` was set by this call.
    spin_count_set: bool
    #: True if glibc keeps freed memory (set by this call or an earlier one).
    freed_memory_kept: bool
    #: Why a setting is not in effect, one line each (empty when both are).
    notes: tuple[str, ...] = ()


def tune_process() -> Tuning:
    """Bound OpenMP's spinning (if torch is not loaded yet and the user chose no OpenMP
    policy) and keep freed memory in the process (glibc); idempotent. Returns what it did.

    Call it before ``import torch``: afterwards the OpenMP setting cannot take effect (the
    returned :class:`Tuning` says so in ``notes``)."""
    notes: list[str] = []
    set_here = bound_openmp_spinning()
    if not set_here and "GOMP_SPINCOUNT" not in os.environ:
        if "OMP_WAIT_POLICY" in os.environ:
            notes.append(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} chosen by the "
                         "user: GOMP_SPINCOUNT left unset")
        elif "torch" in sys.modules:
            notes.append("torch was imported before tune_process(): GOMP_SPINCOUNT would "
                         "not take effect, left unset")
    kept = keep_freed_memory()
    if not kept:
        notes.append("the C library is not glibc or refused mallopt: freed memory is "
                     "returned to the system as usual")
    return Tuning(spin_count=os.environ.get("GOMP_SPINCOUNT"), spin_count_set=set_here,
                  freed_memory_kept=kept, notes=tuple(notes))
