"""Let torch's OpenMP worker threads go to sleep soon after a parallel region.

After each parallel region (a matrix product, an element-wise op on a large tensor) GNU
OpenMP's worker threads busy-wait for the next one, by default for 300,000 spin iterations
(several milliseconds on AMD Zen's slow ``pause``). byzsgd's compiled kernels (the Gram matrix,
the l_inf distances, the order statistics, A Little Is Enough's moments) run on their own
threads (:mod:`byzsgd._pool`), so during a kernel that follows a torch op, the spinning
OpenMP thread holds a core that a kernel thread needs: measured on 2 cores, the (51, 79510)
Gram matrix takes 3.0 ms right after a small torch op instead of 1.9 ms, and the median Krum
training round of ``benchmarks/rounds.py`` took 17.1 ms with the default spinning against
15.5 ms with it bounded (four interleaved runs of each).

``GOMP_SPINCOUNT`` bounds the spinning; libgomp reads it once, when torch loads it, so
:func:`byzsgd.tune_process` sets it (not ``import byzsgd``), only if torch is not imported yet
and the user has not set it (or ``OMP_WAIT_POLICY``) themselves. Back-to-back torch ops are
still served by spinning threads (their gaps are far below the bound).
"""

from __future__ import annotations

import os
import sys

#: Spin iterations before an idle OpenMP thread sleeps (libgomp's default is 300,000).
SPIN_COUNT = 10_000


def bound_openmp_spinning() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` for this process when it can still take
    effect; True if it was set here."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ \
            or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True
