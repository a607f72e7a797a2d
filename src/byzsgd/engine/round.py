"""The pieces of one training round that the simulator and the distributed runtime share.

Both call these with the same :class:`~byzsgd.engine.setup.Setup`, so that a worker
process computing its own vector, a Byzantine worker process forging its row and the
parameter server diagnosing the round do exactly what the single-process simulator does:

* :func:`round_threat` -- whether the attack runs, which rows are Byzantine, and the round's
  attack generator (drawn from (seed, "attack", t), already advanced past the draw of the
  rows, so the attack then draws what it draws in the simulator);
* :func:`honest_vectors` -- the vectors of some (or all) workers at theta_t: gradients, or
  parameters after ``local_steps`` of local SGD, on flipped labels for label-flipping rows;
* :func:`forge` -- a classic attack's Byzantine rows; :func:`corrupt` -- a dimensional
  attack's corruption of the received matrix;
* :func:`round_diagnostics` -- the direction diagnostics of an aggregate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from byzsgd.engine.server import learning_rate
from byzsgd.metrics import diagnostics_from_sums, direction_sums
from byzsgd.seeding import generator_for

if TYPE_CHECKING:
    from byzsgd.engine.setup import Setup


def lr_of(setup: Setup, t: int) -> float:
    """The step size of round t."""
    cfg = setup.config
    return learning_rate(cfg.lr, cfg.lr_schedule, t, cfg.lr_fading)


def round_threat(setup: Setup, t: int) -> tuple[bool, Tensor, torch.Generator]:
    """``(attacked, byzantine rows, generator)`` of round t.

    Every process computes the same answer from (seed, t): workers know by themselves whether
    they are Byzantine this round, and the server which rows are.
    """
    s = setup
    attacked = s.attack is not None and s.threat.active(t)
    g = generator_for(s.config.seed, "attack", t)
    byz = s.threat.byzantine_rows(t, g) if attacked else torch.empty(0, dtype=torch.long)
    return attacked, byz, g


def flips_labels(setup: Setup) -> bool:
    """Whether the attack is a data attack that poisons the Byzantine workers' labels."""
    return setup.attack is not None and hasattr(setup.attack, "label_map")


def reads_byzantine_vectors(setup: Setup) -> bool:
    """Whether an attack round uses the vectors the Byzantine workers would send if honest: a
    dimensional attack corrupts the whole received matrix, a data attack (label flipping)
    trains on poisoned labels, an attack with ``knowledge="own"`` estimates from its own
    gradients (A Little Is Enough, Algorithm 3). Otherwise only honest rows are computed."""
    attack = setup.attack
    return (attack is None or attack.dimensional or flips_labels(setup)
            or attack.knowledge == "own")


def batch(setup: Setup, index: int, flip: Tensor | None, rows: Sequence[int] | None = None,
          *, gather: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The minibatches ``(x, y)`` of draw ``index`` for the workers ``rows`` (all when None),
    labels mapped by the attack for the workers listed in ``flip``, and the training-set
    indices of their samples (one row per worker). ``gather=False`` leaves x uninitialized
    (for a caller that writes it: the sparse first layer)."""
    ds = setup.dataset
    idx = setup.sampler.indices(index)
    workers = None if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    if workers is not None:
        idx = idx[workers]
    if gather:
        # index_select on the flat view: ~3x faster than advanced indexing of (N, C, H, W)
        x = ds.x_train.view(ds.x_train.shape[0], -1).index_select(0, idx.reshape(-1))
    else:
        x = torch.empty((idx.numel(), *ds.x_train.shape[1:]), dtype=ds.x_train.dtype)
    x, y = x.view(*idx.shape, *ds.x_train.shape[1:]), ds.y_train[idx]
    if flip is not None and flip.numel():
        poisoned = flip if workers is None else torch.isin(workers, flip).nonzero().flatten()
        if poisoned.numel():
            y = y.clone()
            y[poisoned] = setup.attack.label_map(y[poisoned], ds.num_classes)
    return x, y, idx


def honest_vectors(setup: Setup, theta: Tensor, t: int, flip: Tensor | None,
                   rows: Sequence[int] | None = None, out: Tensor | None = None) -> Tensor:
    """What the workers ``rows`` (all when None) send if honest, one row each: gradients at
    theta_t, or parameters after ``local_steps`` of local SGD (model averaging). ``flip``
    lists the workers whose labels a data attack poisons (label flipping). Written into
    ``out`` (one row per worker) when given."""
    cfg, flat = setup.config, setup.flat
    if cfg.mode == "gradient":
        sparse = setup.sparse_train
        x, y, samples = batch(setup, t, flip, rows, gather=sparse is None)
        # The sparse first layer writes the dense rows into x as it reads them; the backward
        # pass reads x after it (engine/sparse.py).
        product = None if sparse is None else functools.partial(sparse.linear, samples,
                                                                 dense=x)
        return flat.worker_gradients(theta, x, y, out, product)
    k = cfg.workers if rows is None else len(rows)
    thetas = theta.expand(k, -1).clone()
    lr = lr_of(setup, t)
    for step in range(cfg.local_steps):
        x, y, _ = batch(setup, t * cfg.local_steps + step, flip, rows)
        grads = flat.local_gradients(thetas, x, y)
        thetas = thetas - lr * (grads + cfg.weight_decay * thetas)
    return thetas if out is None else out.copy_(thetas)


def backdoor_loss(setup: Setup, theta: Tensor, t: int) -> Callable[[Tensor], Tensor] | None:
    """The attacker's objective for a candidate vector v: cross-entropy of the model v would
    produce (theta - lr * v for a gradient, v itself for parameters) on the backdoor inputs
    with the attacker's labels."""
    if setup.backdoor is None:
        return None
    x, y = setup.backdoor.attacker_batch(t)
    flat, lr = setup.flat, lr_of(setup, t)
    if setup.config.mode == "gradient":
        return lambda v: flat.loss(theta - lr * v, x, y)
    return lambda v: flat.loss(v, x, y)


def forge(setup: Setup, t: int, theta: Tensor, generator: torch.Generator, *,
          honest: Tensor | None, own: Tensor | None, f: int, n: int | None,
          out: Tensor | None = None) -> Tensor:
    """The f Byzantine rows (f, d) a classic attack builds from what it knows: ``own`` (the
    honest vectors of the f Byzantine workers; None when the attack does not read them, see
    :func:`reads_byzantine_vectors`) and, when given, the ``honest`` rows. Written into
    ``out`` when given."""
    return setup.attack(honest=honest, own=own, f=f, n=n, rule=setup.server.rule,
                        generator=generator, backdoor_loss=backdoor_loss(setup, theta, t),
                        out=out)


def corrupt(setup: Setup, vectors: Tensor, generator: torch.Generator) -> Tensor:
    """The (n, d) matrix after a dimensional attack corrupted values of ``vectors``."""
    cfg = setup.config
    corrupted, _ = setup.attack(gradients=vectors, f=cfg.byzantine, n=cfg.workers,
                                generator=generator)
    return corrupted


def diagnostic_sums(mode: str, theta: Tensor, truth: Tensor, aggregate: Tensor) -> Tensor:
    """:func:`~byzsgd.metrics.direction_sums` of the aggregate and the mean correct vector
    ``truth``: gradients directly, in model-averaging mode the implied updates
    theta_t - vector (on a shard of the coordinates, that shard's part of the sums)."""
    if mode == "gradient":
        return direction_sums(truth, aggregate)
    return direction_sums(theta - truth, theta - aggregate)


def round_diagnostics(setup: Setup, theta: Tensor, truth: Tensor,
                      aggregate: Tensor) -> dict[str, float]:
    """How the aggregate relates to the mean correct vector ``truth``
    (:func:`diagnostic_sums`)."""
    return diagnostics_from_sums(diagnostic_sums(setup.config.mode, theta, truth, aggregate))
