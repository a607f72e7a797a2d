"""Aggregation-rule speed: median time per call, and its ratio to one read pass.

    python benchmarks/aggregators.py            # n in {25, 51}, d in {1e5, 1e6}
    python benchmarks/aggregators.py --quick    # small sizes, for a smoke run

For n = 51, d = 1e6 it also prints the fastest existing library's time on the same work
(measured on this kind of machine, ../shared/ANCHORS.md) and our speed-up over it.
"""

from __future__ import annotations

# first: it bounds OpenMP's spinning, which must happen before torch loads (byzsgd/_openmp.py)
import byzsgd  # noqa: F401  # isort: skip

import argparse
import os
import statistics
import time

import torch

from byzsgd import aggregators

#: Fastest existing library per rule, ms per call, n = 51, d = 1e6, f = 12 (ANCHORS.md).
ANCHORS_MS = {"mean": 7.7, "median": 476, "trimmed-mean": 178, "krum": 141, "multi-krum": 189,
              "geomed": 526, "medoid": 314, "meamed": 2047, "bulyan": 10695}
RULES = ["mean", "median", "trimmed-mean", "meamed", "krum", "multi-krum", "geomed", "medoid",
         "bulyan"]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = [(25, 10_000), (51, 10_000)] if args.quick else [
        (25, 100_000), (25, 1_000_000), (51, 100_000), (51, 1_000_000)]
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"median of {repeats} runs; load average before: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    header = f"{'n':>3} {'d':>9} {'f':>3} {'rule':<13} {'ms':>9} {'x read':>7}"
    if not args.quick:
        header += f" {'anchor ms':>10} {'speed-up':>9}"
    print(header)
    for n, d in sizes:
        f = (n - 3) // 4
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
        read = median_ms(lambda x=x: x.sum(0), repeats)
        print(f"{n:>3} {d:>9} {f:>3} {'sum(0) read':<13} {read:>9.1f} {1.0:>7.1f}")
        for name in RULES:
            rule = aggregators.get(name)
            ms = median_ms(lambda rule=rule, x=x, f=f: rule(x, f), repeats)
            row = f"{n:>3} {d:>9} {f:>3} {name:<13} {ms:>9.1f} {ms / read:>7.1f}"
            if not args.quick and (n, d) == (51, 1_000_000):
                row += f" {ANCHORS_MS[name]:>10.1f} {ANCHORS_MS[name] / ms:>8.1f}x"
            print(row, flush=True)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
