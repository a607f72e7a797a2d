"""Training rounds per second: MNIST MLP 784-100-10, n = 51, f = 12, batch 83, ALIE (z = 1.5),
rules median and krum; evaluation excluded; rounds 11-60 after warm-up (as ANCHORS.md).

Two ALIE settings: ``omniscient`` estimates mu and sigma from the 39 honest gradients, which is
what the existing libraries' ALIE does (their attacks take the honest vectors), so only the 39
honest workers compute gradients: the same work as theirs. ``own`` is A Little Is Enough's
Algorithm 3 (the 12 Byzantine workers estimate from their own honest gradients), which needs
all 51 gradients.

    python benchmarks/rounds.py [--data-dir ../shared/data] [--rounds 60]

Prints rounds/s, ms per round split into honest gradients / attack / aggregation / rest, and
the existing libraries' rounds/s measured on the same work (ANCHORS.md).
"""

from __future__ import annotations

# first: bound OpenMP's spinning, which must happen before torch loads (byzsgd/tuning.py)
from byzsgd.tuning import tune_process  # isort: skip

tune_process()

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import torch

from byzsgd.config import ExperimentConfig
from byzsgd.engine.simulator import Simulation, build

#: rounds/s of the existing libraries on this work (ByzFL 0.11, krum 0.9.1; ANCHORS.md).
ANCHORS = {"median": {"ByzFL": 9.7, "krum": 8.8}, "krum": {"ByzFL": 14.0, "krum": 13.7}}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class Timed:
    """Wraps a callable and accumulates its wall time."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds = 0.0

    def __getattr__(self, name):  # the wrapped object's attributes (an attack's knowledge)
        return getattr(self.fn, name)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def measure(rule: str, knowledge: str, data_dir: str | None, rounds: int,
            warmup: int) -> dict[str, float]:
    dataset = "mnist" if data_dir else "mnist-5k"
    config = ExperimentConfig(dataset=dataset, data_dir=data_dir, model="mlp", workers=51,
                              byzantine=12, aggregator=rule, attack="alie",
                              attack_params={"z": 1.5, "knowledge": knowledge}, batch_size=83,
                              lr=0.1, momentum=0.9, weight_decay=1e-4, rounds=rounds)
    sim = Simulation(build(config), Path("/nonexistent"))  # no files: rounds only
    grads = sim.workers.vectors = Timed(sim.workers.vectors)
    attack = sim.adversary.attack = Timed(sim.adversary.attack)
    aggregate = sim.server.aggregate = Timed(sim.server.aggregate)
    for t in range(warmup):
        sim.round(t)
    grads.seconds = attack.seconds = aggregate.seconds = 0.0
    times = []
    for t in range(warmup, rounds):
        start = time.perf_counter()
        sim.round(t)
        times.append(time.perf_counter() - start)
    n = len(times)
    total = sum(times)
    return {"rounds_per_s": n / total, "median_ms": 1e3 * statistics.median(times),
            "grads_ms": 1e3 * grads.seconds / n, "attack_ms": 1e3 * attack.seconds / n,
            "aggregate_ms": 1e3 * aggregate.seconds / n,
            "rest_ms": 1e3 * (total - grads.seconds - attack.seconds - aggregate.seconds) / n}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA) if DEFAULT_DATA.exists()
                        else None, help="directory with the MNIST IDX files (default: "
                        "../shared/data if present, else the embedded mnist-5k)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'default')}); data: "
          f"{'mnist from ' + args.data_dir if args.data_dir else 'mnist-5k'}; rounds "
          f"{args.warmup + 1}-{args.rounds}; load average before: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"{'rule':<8} {'ALIE':<10} {'rounds/s':>9} {'ms/round':>9} {'grads':>7} {'attack':>7} "
          f"{'aggr':>7} {'rest':>6}   existing libraries (rounds/s)")
    for rule, knowledge in itertools.product(("median", "krum"), ("omniscient", "own")):
        r = measure(rule, knowledge, args.data_dir, args.rounds, args.warmup)
        others = ", ".join(f"{k} {v} ({r['rounds_per_s'] / v:.1f}x)"
                           for k, v in ANCHORS[rule].items())
        print(f"{rule:<8} {knowledge:<10} {r['rounds_per_s']:>9.1f} {r['median_ms']:>9.1f} "
              f"{r['grads_ms']:>7.1f} {r['attack_ms']:>7.1f} {r['aggregate_ms']:>7.1f} "
              f"{r['rest_ms']:>6.1f}   {others}",
              flush=True)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
