"""Which training samples each worker uses in each round."""

from __future__ import annotations

import torch
from torch import Tensor

from byzsgd.engine.placement import CPU
from byzsgd.seeding import generator_for


class WorkerSampler:
    """Minibatches for n workers, each drawing from its own shard of the training set.

    Equal shards (IID): every worker walks through a fresh permutation of its shard each epoch
    (sampling without replacement), so an epoch is ``shard_size // batch_size`` rounds.
    Unequal shards (non-IID partitions): each worker draws its batch uniformly with replacement
    from its shard. Either way the batch of round t depends only on (seed, t): runs resume
    exactly.

    The draws are made on the CPU, from the run's seeded CPU generators, and the indices of
    round t handed out on ``device`` (the run's): every device trains on the same batches.
    """

    def __init__(self, shards: list[Tensor], batch_size: int, seed: int,
                 device: torch.device = CPU) -> None:
        sizes = torch.tensor([len(s) for s in shards], device=CPU)
        if int(sizes.min()) < batch_size:
            worst = int(torch.argmin(sizes))
            raise ValueError(f"batch_size ({batch_size}) is larger than worker {worst}'s shard "
                             f"({int(sizes[worst])} samples): lower batch_size or workers")
        self.n = len(shards)
        self.batch_size = batch_size
        self.seed = seed
        self.sizes = sizes
        self.equal = bool((sizes == sizes[0]).all())
        width = int(sizes.max())
        self.device = device
        self.table = torch.zeros(self.n, width, dtype=torch.long, device=CPU)
        for i, shard in enumerate(shards):
            self.table[i, : len(shard)] = shard
        self.rounds_per_epoch = max(1, int(sizes.float().mean()) // batch_size)
        self._epoch: int | None = None
        self._order: Tensor | None = None

    def epoch(self, t: int) -> float:
        """Epochs (passes over the average shard) completed before round t."""
        return t / self.rounds_per_epoch

    def indices(self, t: int) -> Tensor:
        """Training-set indices (n, batch_size) of round t, on the sampler's device."""
        b = self.batch_size
        if not self.equal:
            g = generator_for(self.seed, "batch", t)
            u = torch.rand(self.n, b, generator=g, device=CPU)
            pos = (u * self.sizes[:, None]).long().clamp_(max=self.table.shape[1] - 1)
            return self.table.gather(1, pos).to(self.device)
        epoch, k = divmod(t, self.rounds_per_epoch)
        if epoch != self._epoch:
            g = generator_for(self.seed, "epoch", epoch)
            perm = torch.argsort(torch.rand(self.table.shape, generator=g, device=CPU), dim=1)
            self._order = self.table.gather(1, perm).to(self.device)
            self._epoch = epoch
        assert self._order is not None
        return self._order[:, k * b:(k + 1) * b]
