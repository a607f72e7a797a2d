"""The training round: workers' vectors, the attack, the rule, the server step.

:mod:`.round` holds the round, top to bottom (``round_``), and its phases, which the
simulator and the distributed runtime (:mod:`byzsgd.distributed`) share; :mod:`.setup`
builds a run from its config; :mod:`.simulator` runs the rounds in one process and
:mod:`.recorder` writes a run's files (both backends). :mod:`.flatmodel` turns a model into
a function of one flat parameter vector and computes all workers' gradients in one batched
call (:mod:`.mlpgrad`: the hand-written backward of the papers' MLPs; :mod:`.sparse`: their
first layer from mostly-zero inputs); :mod:`.sampler` hands each worker its minibatch;
:mod:`.server` aggregates (optionally per parameter shard) and steps.
"""

from .flatmodel import FlatModel
from .sampler import WorkerSampler
from .server import Server, learning_rate

__all__ = ["FlatModel", "Server", "WorkerSampler", "learning_rate"]
