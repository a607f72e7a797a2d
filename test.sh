#!/usr/bin/env bash
# README's test command: set up .venv, lint, then run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
