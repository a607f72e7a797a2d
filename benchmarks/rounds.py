"""Training rounds per second: MNIST MLP 784-100-10, n = 51, f = 12, batch 83, ALIE (z = 1.5),
rules median and krum; evaluation excluded; rounds 11-60 after warm-up (as ANCHORS.md).

Two ALIE settings: ``omniscient`` estimates mu and sigma from the 39 honest gradients, which is
what the existing libraries' ALIE does (their attacks take the honest vectors), so only the 39
honest workers compute gradients: the same work as theirs. ``own`` is A Little Is Enough's
Algorithm 3 (the 12 Byzantine workers estimate from their own honest gradients), which needs
all 51 gradients.

    python benchmarks/rounds.py [--data-dir ../shared/data] [--rounds 60]
    python benchmarks/rounds.py --markdown docs/benchmarks.md

Prints rounds/s, ms per round split into honest gradients / attack / aggregation and, where
ByzFL imports (this interpreter, ``--byzfl-python`` or ``$BYZSGD_BYZFL_PYTHON``), ByzFL's own
training loop on the same data, n, f, batch, rule and attack, run in its interpreter in
blocks of rounds alternating with ours; else the anchors of ANCHORS.md with their machine.
Without ../shared/data it falls back to the embedded mnist-5k, whose 78-sample shards cannot
hold a batch of 83: it then uses a batch of 78 and says so.
"""

from __future__ import annotations

# first: bound OpenMP's spinning, which must happen before torch loads (byzsgd/tuning.py)
from byzsgd.tuning import tune_process  # isort: skip

tune_process()

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _foreign
import _machine
import _report
from _data import default_data

from byzsgd import data
from byzsgd.config import ExperimentConfig
from byzsgd.engine.simulator import Simulation, build

WORKERS, BYZANTINE, Z = 51, 12, 1.5



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


class Ours:
    """byzsgd's simulator on the benchmark's work, timed round by round, with the time split
    into honest gradients / attack / aggregation / rest."""

    def __init__(self, rule: str, knowledge: str, data_dir: str | None, batch: int) -> None:
        config = ExperimentConfig(dataset=dataset_name(data_dir), data_dir=data_dir,
                                  model="mlp", workers=WORKERS, byzantine=BYZANTINE,
                                  aggregator=rule, attack="alie",
                                  attack_params={"z": Z, "knowledge": knowledge},
                                  batch_size=batch, lr=0.1, momentum=0.9, weight_decay=1e-4,
                                  rounds=10**6)
        self.sim = Simulation(build(config), Path("/nonexistent"))  # no files: rounds only
        self.grads = self.sim.workers.vectors = Timed(self.sim.workers.vectors)
        self.attack = self.sim.adversary.attack = Timed(self.sim.adversary.attack)
        self.aggregate = self.sim.server.aggregate = Timed(self.sim.server.aggregate)
        self.t = 0

    def run(self, k: int) -> list[float]:
        """ms of each of k more rounds."""
        times = []
        for _ in range(k):
            start = time.perf_counter()
            self.sim.round(self.t)
            times.append((time.perf_counter() - start) * 1e3)
            self.t += 1
        return times

    def reset_split(self) -> None:
        self.grads.seconds = self.attack.seconds = self.aggregate.seconds = 0.0


def dataset_name(data_dir: str | None) -> str:
    return "mnist" if data_dir else "mnist-5k"


def fitting_batch(data_dir: str | None, wanted: int) -> tuple[int, int]:
    """The batch to use and the shard size: ``wanted`` when each worker's shard holds that many
    samples, else the shard size (mnist-5k's 4,000 training samples give 78 per worker)."""
    dataset = data.load(dataset_name(data_dir), data_dir, download=False)
    shard = len(dataset.y_train) // WORKERS
    return min(wanted, shard), shard


def byzfl_setup(foreign: _foreign.Foreign, rule: str, data_dir: str | None, batch: int,
                folder: Path) -> None:
    """ByzFL's training loop on the same data, n, f, batch, rule and ALIE z."""
    path = folder / "mnist.npz"
    if not path.exists():
        dataset = data.load(dataset_name(data_dir), data_dir, download=False).standardized()
        np.savez(path, images=dataset.x_train.reshape(len(dataset.y_train), -1).numpy(),
                 labels=dataset.y_train.numpy())
    reply = foreign.request(cmd="rounds_setup", data=str(path), rule=rule, workers=WORKERS,
                            byzantine=BYZANTINE, batch=batch, z=Z, lr=0.1, momentum=0.9,
                            weight_decay=1e-4)
    if "error" in reply:
        raise RuntimeError(f"ByzFL's loop did not start: {reply['error']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default_data(),
                        help="directory with the MNIST IDX files (default: ../shared/data if "
                        "it holds them, else the embedded mnist-5k; '' forces mnist-5k)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=83)
    parser.add_argument("--block", type=int, default=10,
                        help="rounds per turn when ours and ByzFL's alternate")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help="also write the table as the 'rounds' section of PATH")
    _foreign.add_arguments(parser)
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or None  # --data-dir "": the embedded mnist-5k
    command = _foreign.command("rounds.py", argv, args.byzfl_python)
    run = _machine.begin()
    batch, shard = fitting_batch(args.data_dir, args.batch)
    notes = []
    if batch != args.batch:
        notes.append(f"batch {batch}, not {args.batch}: {dataset_name(args.data_dir)} gives "
                     f"each of the {WORKERS} workers {shard} samples")
        print(notes[-1])
    foreign = _foreign.start(_foreign.find_python(args.byzfl_python), args.byzfl_pythonpath,
                             torch.get_num_threads())
    if foreign is not None and not foreign.has("byzfl"):
        foreign.close()
        foreign = None
    print(_foreign.versions_line(foreign))
    if foreign is None:
        notes.append(_foreign.rounds_quote_line())
        print(notes[-1])
    measured = args.rounds - args.warmup
    print(f"data: {dataset_name(args.data_dir)}"
          + (f" from {args.data_dir}" if args.data_dir else "")
          + f"; n={WORKERS}, f={BYZANTINE}, batch {batch}, ALIE z={Z}; rounds "
          f"{args.warmup + 1}-{args.rounds} (ours and ByzFL's alternate in blocks of "
          f"{args.block}); evaluation excluded; GOMP_SPINCOUNT="
          f"{os.environ.get('GOMP_SPINCOUNT', 'default')}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="byzsgd-rounds-") as folder:
        for rule in ("median", "krum"):
            ours = {k: Ours(rule, k, args.data_dir, batch) for k in ("omniscient", "own")}
            byzfl = foreign is not None
            if byzfl:
                byzfl_setup(foreign, rule, args.data_dir, batch, Path(folder))
                foreign.request(cmd="rounds", k=args.warmup)
            for sim in ours.values():
                sim.run(args.warmup)
                sim.reset_split()
            times: dict[str, list[float]] = {k: [] for k in [*ours, "ByzFL"]}
            done = 0
            while done < measured:
                k = min(args.block, measured - done)
                for knowledge, sim in ours.items():
                    times[knowledge] += sim.run(k)
                if byzfl:
                    times["ByzFL"] += foreign.request(cmd="rounds", k=k)["times"]
                done += k
            their = statistics.median(times["ByzFL"]) if byzfl else None
            for knowledge, sim in ours.items():
                med = statistics.median(times[knowledge])
                rows.append([rule, knowledge, f"{1e3 / med:.1f}", f"{med:.1f}",
                             f"{1e3 * sim.grads.seconds / measured:.1f}",
                             f"{1e3 * sim.attack.seconds / measured:.1f}",
                             f"{1e3 * sim.aggregate.seconds / measured:.1f}",
                             f"{1e3 / their:.2f}" if their else "-",
                             _report.ratio(their, med)])
            print(_report.text_table(HEADERS, rows[-2:]), flush=True)
    if foreign is not None:
        foreign.close()
    run.finish()
    if args.markdown:
        high = _machine.high_load()
        body = ["### Training rounds, MNIST MLP 784-100-10", "",
                f"`{command.strip()}` (median ms per round, rounds {args.warmup + 1}-"
                f"{args.rounds})", "",
                *[f"- {line}" for line in run.header],
                f"- {_foreign.versions_line(foreign)}",
                *[f"- {note}" for note in notes],
                f"- load average before / after: {run.load_before} / {run.load_after}; "
                f"run time {run.took}"
                + (" -- **measured at high load**" if high else ""), "",
                _report.markdown_table(HEADERS, rows), "",
                "- ours: byzsgd's simulator (grads / attack / aggr: ms per round in each); "
                "ByzFL: its own loop (Client, ByzantineClient, Server, fc_mnist with its "
                "worker momentum 0.9), the same data, n, f, batch, rule and ALIE z; x ByzFL: "
                "its ms per round over ours (above 1: byzsgd faster)."]
        _report.write_section(args.markdown, "rounds", "\n".join(body))
        print(f"wrote the 'rounds' section of {args.markdown}")


HEADERS = ["rule", "ALIE", "rounds/s", "ms/round", "grads", "attack", "aggr",
           "ByzFL rounds/s", "x ByzFL"]


if __name__ == "__main__":
    main()
