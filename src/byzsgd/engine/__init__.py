"""The training round: workers' vectors, the attack, the rule, the server step.

:mod:`.flatmodel` turns a model into a function of one flat parameter vector and computes
all workers' gradients in one batched call (:mod:`.mlpgrad`: the hand-written backward of the
papers' MLPs); :mod:`.sampler` hands each worker its minibatch; :mod:`.setup` builds a run
from its config;
:mod:`.server` aggregates (optionally per parameter shard) and steps; :mod:`.simulator` runs
the rounds in one process; :mod:`.round` holds the pieces of a round that the simulator and
the distributed runtime (:mod:`byzsgd.distributed`) share.
"""

from .flatmodel import FlatModel
from .sampler import WorkerSampler
from .server import Server, learning_rate

__all__ = ["FlatModel", "Server", "WorkerSampler", "learning_rate"]
