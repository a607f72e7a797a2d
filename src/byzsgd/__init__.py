"""byzsgd: Byzantine-robust distributed SGD.

Aggregation rules (:mod:`byzsgd.aggregators`), attacks (:mod:`byzsgd.attacks`), threat models,
a vectorized single-process simulator and a torch.distributed runtime, following
Xie et al. (Generalized Byzantine-tolerant SGD; Fall of Empires), El Mhamdi et al. (The Hidden
Vulnerability of Distributed Learning in Byzantium) and Baruch et al. (A Little Is Enough).
"""

from byzsgd.tuning import Tuning, tune_process

# Importing byzsgd changes no process setting and no environment variable: process tuning
# (OpenMP spinning, glibc's memory thresholds) is tune_process()'s; where numba caches the
# compiled kernels is numba's choice (next to the sources, else its user-wide cache).

__all__ = ["Tuning", "tune_process"]  # and, loaded on first use, run and the helpers below

__version__ = "0.1.0"

#: Helpers for a user's own training loop (:mod:`byzsgd.gradients`), imported on first use so
#: that ``import byzsgd`` stays light and loads torch only when asked to.
_GRADIENT_HELPERS = ("per_worker_gradients", "flatten_like", "unflatten", "write_grad")


def __getattr__(name: str) -> object:
    if name == "run":  # byzsgd.run(config, out, model=..., dataset=..., rule=..., attack=...)
        from byzsgd.api import run

        return run
    if name in _GRADIENT_HELPERS:
        from byzsgd import gradients

        return getattr(gradients, name)
    raise AttributeError(f"module 'byzsgd' has no attribute {name!r}")
