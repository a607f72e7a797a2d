"""The distributed runtime: parameter servers and workers as processes on torch.distributed.

``byzsgd run --backend distributed`` (or ``torchrun ... -m byzsgd.distributed.node``) runs
S parameter-server processes (ranks 0..S-1, each owning a contiguous shard of the
parameters, Generalized Byzantine-tolerant SGD 5.5) and n worker processes (ranks S..S+n-1);
the servers talk over gloo (CPU), each worker to each server over a TCP connection of its own
(never gloo: a gloo peer can abort the receiving process). Every process builds the same
:class:`~byzsgd.engine.setup.Setup` from the same config, so data partition, model
initialization and every random draw of round t agree with the single-process simulator;
the servers run the same rule, server step and metrics, and server 0 writes the same result
files.

Modules: :mod:`.protocol` (message format, tags, timeouts), :mod:`.wire` (the
server-worker connection: framing with checked lengths, token handshake), :mod:`.rendezvous`
(the bound store, the servers' gloo group, where servers listen), :mod:`.links` (a server's
fault-tolerant channels to its workers), :mod:`.server`, :mod:`.worker`, :mod:`.faults`
(fault accounting and test-only fault injection), :mod:`.settings` (time-limit flags),
:mod:`.node` (the per-process entry point) and :mod:`.launch` (local spawning and the torchrun
wrapper). Importing this package does not import torch.
"""
