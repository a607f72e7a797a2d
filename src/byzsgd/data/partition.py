"""Splitting a training set among workers.

The papers give every worker i.i.d. samples of the same data set (Hidden Vulnerability 5,
A Little Is Enough 4, Generalized Byzantine-tolerant SGD 5, Fall of Empires 6): that is
``"iid"``. The two non-i.i.d. schemes are the usual ones of the federated-learning
literature, for studying heterogeneous honest workers: ``"dirichlet"`` (Hsu et al., 2019:
each class spread over the workers with Dirichlet(alpha) proportions; small alpha = strong
skew) and ``"shards"`` (McMahan et al., 2017: sort by label, cut into equal shards, give each
worker a few).

Every scheme returns one int64 index tensor per worker, indices into ``labels``, pairwise
disjoint, each in random order (so consecutive slices are random mini-batches). All the
randomness comes from ``generator``: the same generator state gives the same partition.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

SCHEMES = ("iid", "dirichlet", "shards")


def _check(labels: Tensor, n_workers: int, scheme: str, generator: torch.Generator,
           alpha: float, shards_per_worker: int) -> None:
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        raise ValueError(f"partition: labels must be a 1-D tensor, got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"partition: labels must be integers, got {labels.dtype}")
    n = labels.shape[0]
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"partition: n_workers must be an integer >= 1, got {n_workers!r}")
    if n_workers > n:
        raise ValueError(f"partition: n_workers must be <= the number of examples ({n}), "
                         f"got {n_workers}")
    if scheme not in SCHEMES:
        raise ValueError(f"partition: scheme must be one of {', '.join(SCHEMES)}, "
                         f"got {scheme!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"partition: generator must be a torch.Generator, "
                         f"got {type(generator).__name__}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"partition: alpha must be a finite number > 0, got {alpha!r}")
    if (isinstance(shards_per_worker, bool) or not isinstance(shards_per_worker, int)
            or shards_per_worker < 1):
        raise ValueError(f"partition: shards_per_worker must be an integer >= 1, "
                         f"got {shards_per_worker!r}")
    if scheme == "shards" and n_workers * shards_per_worker > n:
        raise ValueError(f"partition: n_workers * shards_per_worker must be <= the number of "
                         f"examples ({n}), got {n_workers} * {shards_per_worker}")
    if scheme == "dirichlet" and n and int(labels.min()) < 0:
        raise ValueError("partition: labels must be >= 0 for the dirichlet scheme")


def _shuffled(indices: Tensor, generator: torch.Generator) -> Tensor:
    return indices[torch.randperm(indices.numel(), generator=generator)]


def _iid(n: int, n_workers: int, generator: torch.Generator) -> list[Tensor]:
    # Equal shares; the n % n_workers leftover examples are dropped so no worker has more.
    per = n // n_workers
    perm = torch.randperm(n, generator=generator)[: per * n_workers]
    return list(perm.view(n_workers, per).unbind(0))


def _dirichlet(labels: Tensor, n_workers: int, alpha: float,
               generator: torch.Generator) -> list[Tensor]:
    # torch's Dirichlet sampler takes no generator: derive a numpy one from ours instead.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    parts: list[list[Tensor]] = [[] for _ in range(n_workers)]
    for c in torch.unique(labels).tolist():
        members = _shuffled(torch.nonzero(labels == c).flatten(), generator)
        proportions = rng.dirichlet(np.full(n_workers, alpha))
        # Cut points from cumulative proportions: the shares add up to the class size exactly.
        cuts = np.round(np.cumsum(proportions)[:-1] * members.numel()).astype(np.int64)
        for worker, chunk in enumerate(np.split(np.arange(members.numel()), cuts)):
            parts[worker].append(members[torch.from_numpy(chunk)])
    shares = [torch.cat(p) for p in parts]
    # Small alpha (or few examples) can leave a worker with nothing, and a worker without data
    # cannot compute a gradient: move one random example from the largest share to it. Since
    # n_workers <= N, the largest share then holds at least two examples.
    for worker in range(n_workers):
        if shares[worker].numel() == 0:
            donor = max(range(n_workers), key=lambda w: shares[w].numel())
            pick = int(torch.randint(shares[donor].numel(), (1,), generator=generator))
            shares[worker] = shares[donor][pick : pick + 1]
            shares[donor] = torch.cat([shares[donor][:pick], shares[donor][pick + 1 :]])
    return [_shuffled(s, generator) for s in shares]


def _shards(labels: Tensor, n_workers: int, shards_per_worker: int,
            generator: torch.Generator) -> list[Tensor]:
    n = labels.shape[0]
    # Shuffle first so that which examples of a label fall in which shard is random.
    perm = torch.randperm(n, generator=generator)
    by_label = perm[torch.argsort(labels[perm], stable=True)]
    n_shards = n_workers * shards_per_worker
    size = n // n_shards  # the n % n_shards leftover examples are dropped
    shards = by_label[: size * n_shards].view(n_shards, size)
    deal = torch.randperm(n_shards, generator=generator).view(n_workers, shards_per_worker)
    return [_shuffled(shards[row].flatten(), generator) for row in deal]


def partition(labels: Tensor, n_workers: int, scheme: str = "iid", *,
              generator: torch.Generator, alpha: float = 1.0,
              shards_per_worker: int = 2) -> list[Tensor]:
    """Split the training examples among ``n_workers`` workers.

    Args:
        labels: the (N,) integer labels of the training set.
        n_workers: number of workers, 1 <= n_workers <= N.
        scheme: ``"iid"`` (uniformly random, equal sizes N // n_workers, remainder dropped),
            ``"dirichlet"`` (per class, Dirichlet(alpha) proportions over the workers; every
            example is assigned, and a worker left empty gets one example from the largest
            share) or ``"shards"`` (sort by
            label, cut into n_workers * shards_per_worker equal shards, deal them out at
            random; remainder dropped).
        generator: source of all randomness.
        alpha: Dirichlet concentration (> 0), used by ``"dirichlet"``.
        shards_per_worker: shards per worker (>= 1), used by ``"shards"``.

    Returns:
        One int64 tensor of indices into ``labels`` per worker, pairwise disjoint.
    """
    _check(labels, n_workers, scheme, generator, alpha, shards_per_worker)
    labels = labels.detach().cpu().to(torch.int64)
    if scheme == "iid":
        return _iid(labels.shape[0], n_workers, generator)
    if scheme == "dirichlet":
        return _dirichlet(labels, n_workers, float(alpha), generator)
    return _shards(labels, n_workers, shards_per_worker, generator)
