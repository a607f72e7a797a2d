"""Per-coordinate mean and sample standard deviation of the rows of an (m, d) matrix, compiled.

A Little Is Enough's attack (Algorithm 3, line 1) estimates mu_j and sigma_j of every
coordinate from the gradients it knows, each round. With torch this takes three passes over the
(m, d) matrix and a temporary of the same size (mean; x - mu; its squares summed); here each
chunk of columns is read from memory once, its second pass served from cache, and the chunks
run on the shared thread pool.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from byzsgd import kernels
from byzsgd._pool import group_count, run_ranges
from byzsgd.kernels import torch_impl

_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
# Columns per chunk: m rows x 1024 values stay in L2 between the two passes.
_CHUNK = 1024
_GROUPS_PER_THREAD = 4


@njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _moments(x, mu, sigma, lo, hi):  # pragma: no cover - compiled
    m = x.shape[0]
    acc = np.empty(_CHUNK, dtype=np.float64)
    for k0 in range(lo, hi, _CHUNK):
        kl = min(hi, k0 + _CHUNK) - k0
        acc[:kl] = 0.0
        for i in range(m):
            row = x[i, k0:k0 + kl]
            for k in range(kl):
                acc[k] += row[k]
        for k in range(kl):
            acc[k] /= m
            mu[k0 + k] = acc[k]
        sq = np.zeros(kl, dtype=np.float64)
        for i in range(m):
            row = x[i, k0:k0 + kl]
            for k in range(kl):
                dev = row[k] - acc[k]
                sq[k] += dev * dev
        if m > 1:
            for k in range(kl):
                sigma[k0 + k] = np.sqrt(sq[k] / (m - 1))
        else:
            sigma[k0:k0 + kl] = 0.0


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and sample standard deviation (Bessel-corrected; 0 for one row) of
    the rows of ``x`` (m, d), accumulated in float64 and returned in ``x``'s float dtype."""
    x = x.detach()
    if kernels.use_torch(x, "mean_std"):
        return torch_impl.mean_std(x)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    xa = x.to(dtype).contiguous().numpy()
    m, d = xa.shape
    if m == 0:
        raise ValueError("mean_std: needs at least one row")
    mu = np.empty(d, dtype=xa.dtype)
    sigma = np.empty(d, dtype=xa.dtype)
    nthreads = max(1, torch.get_num_threads())
    run_ranges(lambda g, lo, hi: _moments(xa, mu, sigma, lo, hi), d,
               group_count(-(-d // _CHUNK), nthreads, _GROUPS_PER_THREAD), nthreads)
    return torch.from_numpy(mu), torch.from_numpy(sigma)
