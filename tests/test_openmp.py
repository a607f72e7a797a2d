"""Importing byzsgd bounds GNU OpenMP's spinning, only where it can and may (byzsgd/_openmp.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRINT = "import os; {imports}; print(os.environ.get('GOMP_SPINCOUNT'))"


def _spincount(imports: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", PRINT.format(imports=imports)],
                         env={**clean, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize(("imports", "env", "want"), [
    ("import byzsgd", {}, "10000"),                            # set before torch loads
    ("import byzsgd", {"GOMP_SPINCOUNT": "5"}, "5"),           # the user's value is kept
    ("import byzsgd", {"OMP_WAIT_POLICY": "active"}, "None"),  # the user chose a policy
    ("import torch; import byzsgd", {}, "None"),               # too late: libgomp is loaded
])
def test_spin_count_set_only_before_torch_and_unless_chosen(imports, env, want):
    assert _spincount(imports, **env) == want
