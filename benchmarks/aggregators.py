"""Aggregation-rule speed: median time per call, and its ratio to one read pass.

    python benchmarks/aggregators.py            # n in {25, 51}, d in {1e5, 1e6}
    python benchmarks/aggregators.py --quick    # small sizes, for a smoke run
    python benchmarks/aggregators.py --new-only --byzfl-python /path/to/python

For n = 51, d = 1e6 it also prints the fastest existing library's time on the same work
(measured on this kind of machine, ../shared/ANCHORS.md) and our speed-up over it.

Then the pre-aggregators and the newer rules (NNM, bucketing, clipping, ARC, centered
clipping, DnC, RFA) at n = 51, d = 1e6, f = 12, next to one read pass and one Krum call and,
with ``--byzfl-python`` (an interpreter that imports ``byzfl``; ``--byzfl-pythonpath`` is
prepended to its PYTHONPATH, e.g. a torchvision stub), ByzFL's implementation of the same
thing on the same input (saved as .npy): ByzFL runs in that interpreter as a subprocess that
times one call per request, so ours and theirs alternate call by call (medians of each).
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
import tempfile
import time
from pathlib import Path

import numpy as np
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


#: ByzFL's side: reads op names on stdin, answers the ms of one call on the saved input.
BYZFL_WORKER = r"""
import sys, time, json
import numpy as np, torch
import byzfl
x = torch.from_numpy(np.load(sys.argv[1]))
f = int(sys.argv[2])
small = x[:, : x.shape[1] // 10].contiguous()
ops = {
    "nnm": lambda: byzfl.NNM(f=f)(x),
    "nnm d/10": lambda: byzfl.NNM(f=f)(small),
    "bucketing": lambda: byzfl.Bucketing(s=2)(x),
    "clipping": lambda: byzfl.Clipping(c=1.0)(x.clone()),
    "arc": lambda: byzfl.ARC(f=f)(x.clone()),
    "centered-clipping": lambda: byzfl.CenteredClipping(tau=100.0)(x),
    "rfa": lambda: byzfl.GeometricMedian(nu=0.1, T=3)(x),
    "krum": lambda: byzfl.Krum(f=f)(x),
    "clone": lambda: x.clone(),
}
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    name = line.strip()
    start = time.perf_counter()
    ops[name]()
    print((time.perf_counter() - start) * 1e3, flush=True)
"""


class ByzFL:
    """ByzFL in its own interpreter, timing one call per request on the same input."""

    def __init__(self, python: str, pythonpath: str | None, x: torch.Tensor, f: int) -> None:
        self.dir = tempfile.TemporaryDirectory()
        data = Path(self.dir.name) / "x.npy"
        np.save(data, x.numpy())
        script = Path(self.dir.name) / "worker.py"
        script.write_text(BYZFL_WORKER)
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([python, str(script), str(data), str(f)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def call_ms(self, name: str) -> float:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.dir.cleanup()


def new_rules(x: torch.Tensor, f: int) -> dict[str, object]:
    """What the pre-aggregation section times: name -> a call on x (ByzFL name when it has
    the same operation)."""
    from byzsgd.aggregators.preaggregation import arc, bucketing, clipping, nnm

    g = torch.Generator().manual_seed(0)
    small = x[:, : x.shape[1] // 10].contiguous()
    return {
        "krum": lambda: aggregators.krum(x, f),
        "nnm": lambda: nnm(x, f),
        "nnm d/10": lambda: nnm(small, f),
        "krum d/10": lambda: aggregators.krum(small, f),
        "bucketing": lambda: bucketing(x, f, s=2, generator=g),
        "clipping": lambda: clipping(x, f, c=1.0),
        "arc": lambda: arc(x, f),
        "centered-clipping": lambda: aggregators.centered_clipping(x, f, tau=100.0),
        "dnc": lambda: aggregators.dnc(x, f),
        "rfa": lambda: aggregators.rfa(x, f, nu=0.1, iters=3),
        "nnm+krum": lambda: aggregators.bind("krum", f, pre=["nnm"])(x),
        "bucketing+median": lambda: aggregators.bind("median", f,
                                                     pre=[("bucketing", {"s": 2})])(x),
    }


BYZFL_OPS = {"krum", "nnm", "nnm d/10", "bucketing", "clipping", "arc", "centered-clipping",
             "rfa"}
#: ByzFL's NNM gathers an (n, n - f, d) tensor (8 GB at n = 51, d = 1e6): at full size only
#: when that fits this budget, else only on the first d/10 coordinates ("nnm d/10").
BYZFL_GATHER_BYTES = 2 * 2**30


def pre_aggregation_table(n: int, d: int, f: int, repeats: int, byzfl_python: str | None,
                          byzfl_path: str | None) -> None:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    ops = new_rules(x, f)
    byzfl = ByzFL(byzfl_python, byzfl_path, x, f) if byzfl_python else None
    print(f"\npre-aggregation and newer rules, n={n}, d={d}, f={f}; ours and ByzFL alternate "
          f"call by call" + (f" (ByzFL: torch {byzfl.info['torch']}, "
                             f"{byzfl.info['threads']} threads)" if byzfl else ""))
    ours: dict[str, list[float]] = {k: [] for k in ["read", *ops]}
    ops_byzfl = set(BYZFL_OPS)
    if n * (n - f) * d * 4 > BYZFL_GATHER_BYTES:
        ops_byzfl.discard("nnm")
    theirs: dict[str, list[float]] = {k: [] for k in ops_byzfl} if byzfl else {}
    for fn in ops.values():
        fn()  # warm-up (compilation)
    if byzfl:
        for name in theirs:
            byzfl.call_ms(name)
    for _ in range(repeats):
        for name, fn in [("read", lambda: x.sum(0)), *ops.items()]:
            start = time.perf_counter()
            fn()
            ours[name].append((time.perf_counter() - start) * 1e3)
            if byzfl and name in theirs:
                theirs[name].append(byzfl.call_ms(name))
    if byzfl:
        byzfl.close()
    med = {k: statistics.median(v) for k, v in ours.items()}
    print(f"{'operation':<18} {'ms':>9} {'x read':>7} {'x krum':>7} {'ByzFL ms':>10} "
          f"{'speed-up':>9}   (x krum: against Krum on the same d)")
    for name in ours:
        krum = med["krum d/10" if name == "nnm d/10" else "krum"]
        row = f"{name:<18} {med[name]:>9.1f} {med[name] / med['read']:>7.1f} " \
              f"{med[name] / krum:>7.2f}"
        if name in theirs:
            them = statistics.median(theirs[name])
            row += f" {them:>10.1f} {them / med[name]:>8.1f}x"
        print(row, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--new-only", action="store_true",
                        help="only the pre-aggregation / newer-rules table")
    parser.add_argument("--byzfl-python", default=os.environ.get("BYZFL_PYTHON"),
                        help="an interpreter that imports byzfl (default: $BYZFL_PYTHON)")
    parser.add_argument("--byzfl-pythonpath", default=os.environ.get("BYZFL_PYTHONPATH"),
                        help="prepended to that interpreter's PYTHONPATH")
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
    for n, d in [] if args.new_only else sizes:
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
    n, d = (25, 10_000) if args.quick else (51, 1_000_000)
    pre_aggregation_table(n, d, (n - 3) // 4, repeats, args.byzfl_python, args.byzfl_pythonpath)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
