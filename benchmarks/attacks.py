"""Attack speed: median time per forge, against one read pass of the honest matrix and, where
ByzFL implements the same attack, against ByzFL run in a subprocess on the same sizes.

    python benchmarks/attacks.py                 # n = 51, d = 1e6, f = 12 (h = 39 honest)
    python benchmarks/attacks.py --quick         # d = 1e4, for a smoke run
    python benchmarks/attacks.py --byzfl-python PATH --byzfl-path DIR

Each attack forges its f rows as the simulator has it do: in place, in the rows after the
honest ones of the received (n, d) matrix. Rule-aware attacks ask the rule named in the table
(``optimal-*``: 20 rule calls, as ByzFL's default). ByzFL's timing needs a Python where
``import byzfl`` works (ByzFL imports torchvision: a stub package on PYTHONPATH will do); by
default ``/work/wt/byzfl-venv/bin/python`` with ``/work/wt/byzfl-stub``, skipped when absent.
"""

from __future__ import annotations

# first: bound OpenMP's spinning, which must happen before torch loads (byzsgd/tuning.py)
from byzsgd.tuning import tune_process  # isort: skip

tune_process()

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from byzsgd import aggregators, attacks

#: (label, attack, params, rule or None, ByzFL equivalent or None).
CASES = [
    ("alie", "alie", {"z": 1.5, "knowledge": "omniscient"}, None, "alie"),
    ("ipm", "ipm", {"epsilon": 0.1}, None, "ipm"),
    ("min-max", "min-max", {}, None, None),
    ("min-max std", "min-max", {"perturbation": "std"}, None, None),
    ("min-sum", "min-sum", {}, None, None),
    ("fang-krum", "fang-krum", {}, "krum", None),
    ("fang-trim", "fang-trim", {}, "median", None),
    ("mimic warm-up", "mimic", {"warmup": 10 ** 9}, None, None),
    # ByzFL's Mimic returns the row of a worker given by index (no heuristic, one view)
    ("mimic frozen", "mimic", {"warmup": 1}, None, "mimic"),
    ("optimal-alie", "optimal-alie", {}, "median", "optimal-alie-median"),
    ("optimal-alie krum", "optimal-alie", {}, "krum", "optimal-alie-krum"),
    ("optimal-ipm", "optimal-ipm", {}, "median", "optimal-ipm-median"),
]

BYZFL_SCRIPT = r"""
import json, statistics, sys, time
import torch, byzfl
h, f, d, repeats = (int(a) for a in sys.argv[1:5])
x = torch.randn(h, d, generator=torch.Generator().manual_seed(0)) + 0.1
cases = {
    "alie": lambda: byzfl.ALittleIsEnough(tau=1.5),
    "ipm": lambda: byzfl.InnerProductManipulation(tau=0.1),
    "mimic": lambda: byzfl.Mimic(epsilon=0),
    "optimal-alie-median": lambda: byzfl.Optimal_ALittleIsEnough(
        agg=byzfl.Median(), pre_agg_list=[], f=f),
    "optimal-alie-krum": lambda: byzfl.Optimal_ALittleIsEnough(
        agg=byzfl.Krum(f=f), pre_agg_list=[], f=f),
    "optimal-ipm-median": lambda: byzfl.Optimal_InnerProductManipulation(
        agg=byzfl.Median(), pre_agg_list=[], f=f),
}
out = {}
for name in sys.argv[5].split(","):
    attack = cases[name]()
    times, reads = [], []
    for _ in range(repeats):
        tic = time.perf_counter()
        x.sum(0)
        reads.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        attack(x)
        times.append(time.perf_counter() - tic)
    out[name] = (statistics.median(times) * 1e3, statistics.median(reads) * 1e3)
print(json.dumps(out))
"""


def interleaved_ms(fn, read, repeats: int) -> tuple[float, float]:
    """Median ms of ``fn`` and of ``read``, timed alternately (the load is shared)."""
    fn()  # warm-up (compilation, caches)
    times, reads = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        reads.append(time.perf_counter() - start)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, statistics.median(reads) * 1e3


def byzfl_times(python: str, path: str, h: int, f: int, d: int, repeats: int,
                names: list[str]) -> dict[str, tuple[float, float]] | None:
    if not Path(python).exists():
        return None
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run([python, "-c", BYZFL_SCRIPT, str(h), str(f), str(d), str(repeats),
                             ",".join(names)], capture_output=True, text=True, env=env,
                            timeout=3600)
    if result.returncode != 0:
        print(f"ByzFL not timed: {result.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e4, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--byzfl-python", default="/work/wt/byzfl-venv/bin/python")
    parser.add_argument("--byzfl-path", default="/work/wt/byzfl-stub")
    parser.add_argument("--no-byzfl", action="store_true")
    args = parser.parse_args(argv)
    n, f = 51, 12
    d = 10_000 if args.quick else 1_000_000
    h = n - f
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, n={n}, "
          f"f={f}, d={d}, median of {repeats} runs; load average before: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    matrix = torch.randn(n, d, generator=torch.Generator().manual_seed(0)) + 0.1
    honest, out = matrix[:h], matrix[h:]
    ours: dict[str, tuple[float, float]] = {}
    for label, name, params, rule_name, _ in CASES:
        rule = aggregators.bind(rule_name or "krum", f)
        attack = attacks.get(name, **params)

        def forge(attack=attack, rule=rule):
            attack(honest=honest, f=f, n=n, rule=rule, out=out,
                   generator=torch.Generator().manual_seed(1))

        ours[label] = interleaved_ms(forge, lambda: honest.sum(0), repeats)
    theirs = None
    if not args.no_byzfl:
        wanted = sorted({c[4] for c in CASES if c[4] is not None})
        theirs = byzfl_times(args.byzfl_python, args.byzfl_path, h, f, d,
                             repeats if args.quick else max(1, repeats // 2), wanted)
    print("ms: median per forge; x read: over one read pass of the honest matrix (sum(0)) "
          "timed interleaved with it, in the same process; speed-up: ByzFL's x read over ours")
    print(f"{'attack':<18} {'rule':<7} {'ms':>9} {'x read':>7} {'ByzFL ms':>9} {'x read':>7} "
          f"{'speed-up':>9}")
    for label, _, _, rule_name, byzfl_name in CASES:
        ms, read = ours[label]
        row = f"{label:<18} {rule_name or '':<7} {ms:>9.1f} {ms / read:>7.1f}"
        if theirs is not None and byzfl_name in theirs:
            their_ms, their_read = theirs[byzfl_name]
            row += (f" {their_ms:>9.1f} {their_ms / their_read:>7.1f} "
                    f"{(their_ms / their_read) / (ms / read):>8.1f}x")
        print(row)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
