#!/usr/bin/env bash
# GPU check for issue 13: the CUDA tests, then the rules at n = 51, d = 1e7 on the GPU (torch
# kernels) vs the CPU (compiled kernels), as a table. Needs a CUDA build of torch; run from the
# repository root on a GPU machine:  bash scripts/gpu-check.sh  [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-python}}"
[ -x .venv/bin/python ] && [ -z "${1:-}" ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu-check: torch {torch.__version__} sees no CUDA device")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PYEOF
if ! "$PY" -c "import byzsgd, pytest" 2>/dev/null; then
    # torch is already there: this installs byzsgd's other dependencies only
    "$PY" -m pip install -q -e ".[dev]"
fi

"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py

"$PY" - <<'PYEOF'
import statistics, time
import torch
from byzsgd import aggregators
from byzsgd.aggregators import _registry as registry

N, F, D = 51, 12, 10_000_000
REPEATS = 3
torch.manual_seed(0)
x = torch.randn(N, D)
xg = x.cuda()

def timed(fn):
    times = []
    for _ in range(REPEATS):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)

print(f"\nrules at n={N}, f={F}, d={D:.0e} float32, median of {REPEATS} "
      f"(CPU: compiled kernels, {torch.get_num_threads()} threads)")
print(f"{'rule':<18}{'cpu s':>10}{'gpu s':>10}{'speed-up':>10}{'max |diff|':>14}")
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
