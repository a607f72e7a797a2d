#!/usr/bin/env bash
# GPU check for issue 13, as tables:
#   1. the CUDA tests (tests/test_cuda.py);
#   2. the rules at n = 51, d = 1e7 on the GPU (torch kernels) vs the CPU (compiled kernels);
#   3. per-worker gradients of cnn-cifar and resnet20 at n = 25 on the GPU: loop vs vmap over
#      all workers vs chunks (benchmarks/gradients.py --conv), which checks the GPU rule of
#      byzsgd.engine.flatmodel.default_method;
#   4. training rounds/s of cnn-cifar and resnet20 at n = 25 on the GPU (byzsgd.run with
#      device cuda, synthetic CIFAR-shaped data, a few rounds after one of warm-up).
# Needs a CUDA build of torch; from the repository root on a GPU machine (about 3-5 minutes on
# an H200, installs included):   bash scripts/gpu-check.sh [PYTHON]
# Dry run of the Python parts on the CPU, with small sizes (no GPU needed):
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-python}}"
[ -x .venv/bin/python ] && [ -z "${1:-}" ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export GPU_CHECK_DEVICE="${GPU_CHECK_DEVICE:-cuda}"
START=$SECONDS

"$PY" - <<'PYEOF'
import os, sys, torch
if os.environ["GPU_CHECK_DEVICE"] == "cpu":
    print(f"gpu-check: DRY RUN on the CPU (GPU_CHECK_DEVICE=cpu), small sizes; torch "
          f"{torch.__version__}")
elif not torch.cuda.is_available():
    sys.exit(f"gpu-check: torch {torch.__version__} sees no CUDA device "
             f"(GPU_CHECK_DEVICE=cpu runs the Python parts on the CPU)")
else:
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
          f"{torch.cuda.device_count()} GPU(s)")
PYEOF
if ! "$PY" -c "import byzsgd, pytest" 2>/dev/null; then
    # torch is already there: this installs byzsgd's other dependencies only
    "$PY" -m pip install -q -e ".[dev]"
fi

echo; echo "== 1. CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_distributed_devices.py \
    -k "not runs_on_the_configured_device"

echo; echo "== 2. rules, GPU vs CPU"
"$PY" - <<'PYEOF'
import os, statistics, time
from byzsgd import tune_process
tune_process()
import torch
from byzsgd import aggregators
from byzsgd.aggregators import _registry as registry

DEV = os.environ["GPU_CHECK_DEVICE"]
DRY = DEV == "cpu"
N, F, D = 51, 12, 100_000 if DRY else 10_000_000
REPEATS = 1 if DRY else 3
torch.manual_seed(0)
x = torch.randn(N, D)
xg = x.to(DEV)

def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()

def timed(fn):
    times = []
    for _ in range(REPEATS):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)

print(f"rules at n={N}, f={F}, d={D:.0e} float32, median of {REPEATS} "
      f"(CPU: compiled kernels, {torch.get_num_threads()} threads; {DEV}: torch kernels)")
print(f"{'rule':<18}{'cpu s':>10}{('dry' if DRY else DEV) + ' s':>10}{'speed-up':>10}"
      f"{'max |diff|':>14}")
for name in registry.names():
    if name in ("brute",):  # C(n, f) subsets: not a d-bound rule
        continue
    rule = aggregators.get(name)
    try:
        rule(x[:, :1000], F)
    except ValueError as e:
        print(f"{name:<18} skipped: {e}")
        continue
    rule(xg[:, :1000], F)  # warm up (numba compile, CUDA context and kernels)
    cpu_s = timed(lambda: rule(x, F))
    gpu_s = timed(lambda: rule(xg, F))
    diff = float((rule(xg, F).cpu() - rule(x, F)).abs().max())
    print(f"{name:<18}{cpu_s:>10.3f}{gpu_s:>10.3f}{cpu_s / gpu_s:>10.1f}{diff:>14.3g}")
PYEOF

echo; echo "== 3. per-worker gradients at n = 25 (loop vs vmap vs chunks)"
if [ "$GPU_CHECK_DEVICE" = cpu ]; then
    "$PY" benchmarks/gradients.py --conv --device cpu --workers 4 --batch 4 --chunks 2 \
        --repeats 1 --models cnn-cifar
else
    "$PY" benchmarks/gradients.py --conv --device cuda --workers 25 --batch 32 \
        --chunks 5,12 --repeats 5
fi

echo; echo "== 4. training rounds/s at n = 25"
"$PY" - <<'PYEOF'
import os, tempfile, time
from byzsgd import tune_process
tune_process()
import torch
import byzsgd
from byzsgd.data import Dataset

DEV = os.environ["GPU_CHECK_DEVICE"]
DRY = DEV == "cpu"
N, F, BATCH = (5, 1, 8) if DRY else (25, 5, 32)
ROUNDS = 2 if DRY else 11  # round 0 warms up (cuDNN autotuning, allocator)
g = torch.Generator().manual_seed(0)
train, test = (500, 100) if DRY else (50_000, 10_000)
cifar = Dataset(name="cifar-shaped", x_train=torch.rand(train, 3, 32, 32, generator=g),
                y_train=torch.randint(0, 10, (train,), generator=g),
                x_test=torch.rand(test, 3, 32, 32, generator=g),
                y_test=torch.randint(0, 10, (test,), generator=g), num_classes=10)
print(f"n={N}, f={F} (ALIE), median rule, batch {BATCH}, synthetic 3x32x32 "
      f"({train} train), device {DEV}; {ROUNDS} rounds, evaluation at the end only")
print(f"{'model':<10}{'rounds/s':>10}{'s/round':>10}{'wall s':>9}{'final acc':>11}")
for model in ("cnn-cifar", "resnet20"):
    cfg = dict(model=model, workers=N, byzantine=F, aggregator="median", attack="alie",
               rounds=ROUNDS, batch_size=BATCH, lr=0.05, eval_every=ROUNDS,
               eval_train_samples=500, device=DEV)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = byzsgd.run(cfg, out, dataset=cifar, quiet=True)
        wall = time.perf_counter() - t0
    rps = summary.get("rounds_per_s") or 0.0
    print(f"{model:<10}{rps:>10.2f}{1 / rps if rps else float('nan'):>10.3f}{wall:>9.1f}"
          f"{100 * summary['final_test_accuracy']:>10.1f}%")
PYEOF
echo; echo "gpu-check: done in $((SECONDS - START)) s"
