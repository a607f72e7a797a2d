"""Distance kernels: the centered Gram matrix against torch's ``x @ x.T`` and one read pass
``x.sum()`` (one flat reduction); the max-norm (l_inf) distances against ``torch.cdist(p=inf)``.

    python benchmarks/gram.py              # n in {25, 51}, d in {1e5, 1e6}, median of 15 runs
    python benchmarks/gram.py --quick      # small sizes, for a smoke run

The three operations are timed in interleaved rounds (after a warm-up), so that a noisy
neighbour slows them alike, and the ratios are taken between medians of the same run. The
center is one of the rows, as the distance-based rules use it.
"""

from __future__ import annotations

# first: bound OpenMP's spinning, which must happen before torch loads (byzsgd/tuning.py)
from byzsgd.tuning import tune_process  # isort: skip

tune_process()

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine

from byzsgd.aggregators._gram import centered_gram, warmup
from byzsgd.aggregators._linf import linf_distances


def interleaved_medians(ops: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each op over ``repeats`` rounds that run every op once."""
    for op in ops.values():
        op()  # warm-up: caches, thread pools, page faults
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            start = time.perf_counter()
            op()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 5 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 15)")
    args = parser.parse_args(argv)
    sizes = [(25, 10_000), (51, 10_000)] if args.quick else [
        (25, 100_000), (25, 1_000_000), (51, 100_000), (51, 1_000_000)]
    repeats = max(5, args.repeats or (5 if args.quick else 15))

    start = time.perf_counter()
    warmup()
    print(f"warmup() (compile or load from cache): {time.perf_counter() - start:.1f} s")
    _machine.print_header()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"median of {repeats} interleaved runs; load average before: {load()}")
    header = (f"{'n':>3} {'d':>9} {'gram ms':>8} {'x@x.T ms':>9} {'sum ms':>7} "
              f"{'x@x.T/gram':>10} {'gram/sum':>8} {'max rel err':>11}")
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for n, d in sizes:
        x = torch.randn(n, d, generator=gen)
        center = x[0]
        ms = interleaved_medians({
            "gram": lambda x=x, c=center: centered_gram(x, c),
            "mm": lambda x=x: x @ x.T,
            "sum": lambda x=x: x.sum(),
        }, repeats)
        xc = (x - center).double().numpy()
        ref = torch.from_numpy(xc @ xc.T)
        err = ((centered_gram(x, center) - ref).abs().max() / ref.diagonal().max()).item()
        print(f"{n:>3} {d:>9} {ms['gram']:>8.1f} {ms['mm']:>9.1f} {ms['sum']:>7.1f} "
              f"{ms['mm'] / ms['gram']:>10.2f} {ms['gram'] / ms['sum']:>8.2f} {err:>11.1e}")
    print()
    print("l_inf distances (Hidden Vulnerability's l_inf setting: 30 + 27 workers, the MNIST MLP)")
    header = f"{'n':>3} {'d':>9} {'kernel ms':>9} {'cdist ms':>9} {'cdist/kernel':>12}"
    print(header)
    print("-" * len(header))
    inf = float("inf")
    for n, d in [(25, 10_000)] if args.quick else [(57, 79_510), (25, 1_000_000)]:
        x = torch.randn(n, d, generator=gen)
        ms = interleaved_medians({"kernel": lambda x=x: linf_distances(x),
                                  "cdist": lambda x=x: torch.cdist(x, x, p=inf)}, repeats)
        assert torch.equal(linf_distances(x), torch.cdist(x.double(), x.double(), p=inf))
        print(f"{n:>3} {d:>9} {ms['kernel']:>9.1f} {ms['cdist']:>9.1f} "
              f"{ms['cdist'] / ms['kernel']:>12.1f}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
