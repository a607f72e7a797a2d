#!/usr/bin/env bash
# README's main-job command: set up .venv, then compare rules under attacks on the embedded
# mnist-5k data set (byzsgd demo); prints the table and where the plots are.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/bootstrap.sh
exec .venv/bin/byzsgd demo "$@"
