"""byzsgd: Byzantine-robust distributed SGD.

Aggregation rules (:mod:`byzsgd.aggregators`), attacks (:mod:`byzsgd.attacks`), threat models,
a vectorized single-process simulator and a torch.distributed runtime, following
Xie et al. (Generalized Byzantine-tolerant SGD; Fall of Empires), El Mhamdi et al. (The Hidden
Vulnerability of Distributed Learning in Byzantium) and Baruch et al. (A Little Is Enough).
"""

from byzsgd._openmp import bound_openmp_spinning

bound_openmp_spinning()  # before anything imports torch

__version__ = "0.1.0"
