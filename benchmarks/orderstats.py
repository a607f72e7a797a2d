"""Order-statistics kernels against one read pass of their input, in CPU time of one thread.

    python benchmarks/orderstats.py                  # n = 51, d = 1e6, f = 12, float32
    python benchmarks/orderstats.py --n 25 --d 100000 --repeats 9
    python benchmarks/orderstats.py --threads 2      # wall-clock time, kernels and read pass
                                                     # on 2 threads (a quiet machine only)

Each rule (coordinate median, trimmed mean, mean around median, Bulyan's second phase on a
selection of n - 2f rows) runs single-threaded on the calling thread and is timed with
``time.thread_time()`` (CPU time of this thread, so other processes on a shared machine do not
count), interleaved call by call with one read pass of the same matrix (a compiled sum over
all its values, also single-threaded); the ratio printed is median(rule) / median(read pass).
The first line names the kernel variant chosen for this CPU (``byzsgd.kernels.describe()``).
With ``--threads N`` both sides run on N threads (the kernels on the shared pool, the read pass
over N column ranges on the same pool) and are timed by the wall clock instead: meaningful only
when the machine is otherwise idle.
"""

from __future__ import annotations

# first: it bounds OpenMP's spinning, which must happen before torch loads (byzsgd/_openmp.py)
import byzsgd  # noqa: F401  # isort: skip

import argparse
import os
import statistics
import time

import numba
import numpy as np
import torch

from byzsgd import kernels
from byzsgd._pool import run_ranges
from byzsgd.aggregators import _orderstats as ost


@numba.njit(cache=True, nogil=True)
def read_pass(x):  # pragma: no cover - compiled
    """Sum of every value of ``x`` (n, d): one read of the matrix."""
    acc = np.zeros(16, dtype=x.dtype)
    n, d = x.shape
    for r in range(n):
        row = x[r]
        full = d - d % 16
        for j in range(0, full, 16):
            for k in range(16):
                acc[k] += row[j + k]
        for j in range(full, d):
            acc[0] += row[j]
    return acc.sum()


@numba.njit(cache=True, nogil=True)
def read_columns(x, j0, j1):  # pragma: no cover - compiled
    """Sum of the values of columns [j0, j1) of ``x``, row by row."""
    acc = np.zeros(16, dtype=x.dtype)
    for r in range(x.shape[0]):
        row = x[r]
        full = j0 + (j1 - j0) // 16 * 16
        for j in range(j0, full, 16):
            for k in range(16):
                acc[k] += row[j + k]
        for j in range(full, j1):
            acc[0] += row[j]
    return acc.sum()


def parallel_read_pass(x: np.ndarray, nthreads: int) -> None:
    """One read pass on ``nthreads`` threads: 4 column ranges per thread, handed out as the
    kernels' blocks are."""
    d = x.shape[1]
    run_ranges(lambda g, j0, j1: read_columns(x, j0, j1), d, 4 * nthreads, nthreads)


def cases(x: torch.Tensor, f: int) -> dict:
    n = x.shape[0]
    theta = n - 2 * f
    chosen = torch.arange(0, n, 2)[:theta] if 2 * theta <= n + 1 else torch.arange(theta)
    return {
        "median": lambda: ost.coordinate_median(x),
        "trimmed-mean": lambda: ost.coordinate_trimmed_mean(x, f),
        "meamed": lambda: ost.coordinate_mean_around_median(x, n - f),
        "bulyan-phase2": lambda: ost.coordinate_mean_around_median(x, theta - 2 * f,
                                                                   rows=chosen),
    }


def measure(n: int, d: int, f: int, repeats: int, dtype: torch.dtype,
            threads: int = 1) -> dict[str, float]:
    """Median time of each rule and of the read pass, measured interleaved: CPU time of this
    thread when ``threads`` is 1, wall-clock time otherwise."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    arr = x.numpy()
    runs = cases(x, f)
    times: dict[str, list[float]] = {name: [] for name in ["read pass", *runs]}
    if threads == 1:
        clock, read = time.thread_time, lambda: read_pass(arr)
    else:
        clock, read = time.perf_counter, lambda: parallel_read_pass(arr, threads)
    read()
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in [("read pass", read), *runs.items()]:
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=51)
    parser.add_argument("--d", type=int, default=1_000_000)
    parser.add_argument("--f", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # with 1 the kernels run on the calling thread only
    print(f"kernels: {kernels.describe()}")
    clock = ("CPU time of one thread" if args.threads == 1
             else f"wall-clock time, {args.threads} threads")
    print(f"load: {os.getloadavg()[0]:.2f}  n={args.n} d={args.d} f={args.f} "
          f"repeats={args.repeats} ({clock}, medians)")
    dtype = torch.float64 if args.float64 else torch.float32
    med = measure(args.n, args.d, args.f, args.repeats, dtype, args.threads)
    base = med["read pass"]
    for name, t in med.items():
        print(f"{name:>14}: {t * 1e3:8.1f} ms  {t / base:5.2f}x read pass")


if __name__ == "__main__":
    main()
