"""Per-worker gradients: the hand-written dense-MLP backward against torch.func.vmap and a loop.

    python benchmarks/gradients.py [--data-dir ../shared/data] [--repeats 15]

MNIST minibatches, n = 51 workers x batch 83 (the rounds benchmark's work), for the papers'
MLPs; the workers share theta (gradient mode) or each has its own (model averaging). Prints the
median ms per call of each method, measured interleaved in the same process, and the largest
difference from vmap's gradients.
"""

from __future__ import annotations

# first: bound OpenMP's spinning, which must happen before torch loads (byzsgd/tuning.py)
from byzsgd.tuning import tune_process  # isort: skip

tune_process()

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from byzsgd import data, models
from byzsgd.engine.flatmodel import FlatModel

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METHODS = ("mlp", "vmap", "loop")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA) if DEFAULT_DATA.exists()
                        else None, help="MNIST IDX files (default: ../shared/data if present, "
                        "else the embedded mnist-5k)")
    parser.add_argument("--workers", type=int, default=51)
    parser.add_argument("--batch", type=int, default=83)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    ds = data.load("mnist" if args.data_dir else "mnist-5k", data_dir=args.data_dir)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ds.x_train.shape[0], (args.workers, args.batch), generator=g)
    x, y = ds.x_train[idx], ds.y_train[idx]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; n={args.workers}, "
          f"b={args.batch}; load average before: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"{'model':<10} {'theta':<8} " + " ".join(f"{m + ' ms':>9}" for m in METHODS)
          + f" {'vmap/mlp':>9} {'max |mlp - vmap|':>17}")
    for name in ("mlp", "mlp-2x128"):
        module = models.build(name, ds.input_shape, ds.num_classes, generator=g)
        flats = {m: FlatModel(module, method=m) for m in METHODS}
        theta = flats["mlp"].initial()
        for shared in (True, False):
            th = theta if shared else theta + 0.01 * torch.randn(args.workers, theta.numel(),
                                                                  generator=g)

            def call(m: str, th=th, shared=shared, flats=flats) -> torch.Tensor:
                f = flats[m]
                return f.worker_gradients(th, x, y) if shared else f.local_gradients(th, x, y)

            diff = float((call("mlp") - call("vmap")).abs().max())
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for _ in range(args.repeats):
                for m in METHODS:
                    start = time.perf_counter()
                    call(m)
                    times[m].append(1e3 * (time.perf_counter() - start))
            med = {m: statistics.median(v) for m, v in times.items()}
            print(f"{name:<10} {'shared' if shared else 'own':<8} "
                  + " ".join(f"{med[m]:>9.2f}" for m in METHODS)
                  + f" {med['vmap'] / med['mlp']:>9.2f} {diff:>17.2e}", flush=True)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
