"""Per-worker gradients: the hand-written dense-MLP backward against torch.func.vmap and a loop;
for conv nets, vmap over all workers against a loop and chunks of k workers.

    python benchmarks/gradients.py [--data-dir ../shared/data] [--repeats 15]
    python benchmarks/gradients.py --conv [--device cpu] [--workers 25] [--batch 32]

MNIST minibatches, n = 51 workers x batch 83 (the rounds benchmark's work), for the papers'
MLPs; the workers share theta (gradient mode) or each has its own (model averaging). Prints the
median ms per call of each method, measured interleaved in the same process, and the largest
difference from vmap's gradients.

``--conv``: the CIFAR CNN (``cnn-cifar``) and ResNet-20 on synthetic CIFAR-shaped data
(3 x 32 x 32, seeded), n = 25 workers at the same theta, on ``--device``: the loop over workers,
vmap over all n, and vmap in chunks of k workers (``--chunks``), interleaved; the table gives
median ms, each method's time over the loop's, the largest difference from the loop's
gradients, and the estimated vmap working set (``flatmodel.vmap_bytes``). Measured on the
2-core machine (load 10-19, 5 repeats, n = 25, b = 32): cnn-cifar loop 3.0 s, vmap 1.24x,
chunks of 5 2.48x; resnet20 loop 70 s, vmap 1.04x, chunks of 5 0.97x: the loop stays the CPU
default for conv nets (``flatmodel.default_method``).
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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine
from _data import default_data

from byzsgd import data, models
from byzsgd.engine.flatmodel import FlatModel, vmap_bytes

METHODS = ("mlp", "vmap", "loop")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default_data(),
                        help="MNIST IDX files (default: ../shared/data if it holds them, "
                        "else the embedded mnist-5k)")
    parser.add_argument("--workers", type=int, help="n (default 51; --conv: 25)")
    parser.add_argument("--batch", type=int, help="examples per worker (default 83; --conv: 32)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--conv", action="store_true",
                        help="the conv-net comparison (cnn-cifar, resnet20) instead")
    parser.add_argument("--device", default="cpu", help="--conv: the device (cpu, cuda, ...)")
    parser.add_argument("--chunks", default="5",
                        help="--conv: comma-separated chunk sizes k (default 5)")
    parser.add_argument("--models", default="cnn-cifar,resnet20", help="--conv: the models")
    args = parser.parse_args(argv)
    if args.conv:
        conv_table(args)
        return
    args.workers = args.workers or 51
    args.batch = args.batch or 83
    ds = data.load("mnist" if args.data_dir else "mnist-5k", data_dir=args.data_dir)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ds.x_train.shape[0], (args.workers, args.batch), generator=g)
    x, y = ds.x_train[idx], ds.y_train[idx]
    _machine.print_header()
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_table(args: argparse.Namespace) -> None:
    """Loop vs vmap over all workers vs vmap in chunks, for the conv nets, on one device."""
    n, batch = args.workers or 25, args.batch or 32
    device = torch.device(args.device)
    chunks = [int(k) for k in args.chunks.split(",") if k and int(k) < n]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (n, batch), generator=g).to(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"n={n}, b={batch}, synthetic 3x32x32; load average before: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    names = ["loop", "vmap", *(f"chunk{k}" for k in chunks)]
    print(f"{'model':<10} {'d':>8} {'vmap MB':>8} " + " ".join(f"{m + ' ms':>11}" for m in names)
          + " " + " ".join(f"{m + '/loop':>11}" for m in names[1:]) + f" {'max |diff|':>11}")
    for name in args.models.split(","):
        module = models.build(name, (3, 32, 32), 10, generator=g).to(device)
        flats = {"loop": FlatModel(module, method="loop"),
                 "vmap": FlatModel(module, method="vmap", chunk=n),
                 **{f"chunk{k}": FlatModel(module, method="vmap", chunk=k) for k in chunks}}
        theta = flats["loop"].initial()
        ref = flats["loop"].worker_gradients(theta, x, y)
        diff = max(float((f.worker_gradients(theta, x, y) - ref).abs().max())
                   for m, f in flats.items() if m != "loop")
        times: dict[str, list[float]] = {m: [] for m in names}
        for _ in range(args.repeats):
            for m in names:
                _sync(device)
                start = time.perf_counter()
                flats[m].worker_gradients(theta, x, y)
                _sync(device)
                times[m].append(1e3 * (time.perf_counter() - start))
        med = {m: statistics.median(v) for m, v in times.items()}
        mb = vmap_bytes(module, (3, 32, 32), batch, n) / 2**20
        print(f"{name:<10} {theta.numel():>8} {mb:>8.0f} "
              + " ".join(f"{med[m]:>11.1f}" for m in names) + " "
              + " ".join(f"{med[m] / med['loop']:>11.2f}" for m in names[1:])
              + f" {diff:>11.2e}", flush=True)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
