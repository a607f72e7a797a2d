"""One training round, in one place: :func:`round_`, and the phases it is made of.

Round t (Algorithm 1 of Fall of Empires and of Generalized Byzantine-tolerant SGD; in
``model-averaging`` mode Algorithm 1 of A Little Is Enough), read top to bottom in
:func:`round_`:

1. draw which workers are Byzantine this round (:meth:`Adversary.draw`);
2. the workers compute their vectors honestly at theta_t (:meth:`Workers.vectors`):
   gradients, or parameters after ``local_steps`` of local SGD;
3. the Byzantine workers forge theirs from what they know (:meth:`Adversary.forge`), or a
   dimensional attack corrupts values of the received matrix (:meth:`Adversary.corrupt`);
4. the server aggregates with the rule and steps (:class:`Step`);
5. the round is measured: how the aggregate relates to the mean correct vector
   (:func:`diagnostic_sums`, :func:`byzsgd.metrics.diagnostics_from_sums`), and the
   Byzantine rows a selection-based rule picked.

The phases take what they read and nothing else. The distributed runtime calls them one by
one: a worker process runs :meth:`Workers.vectors` for its row and, when Byzantine,
:meth:`Adversary.forge`; a shard server :meth:`Adversary.draw`, :meth:`Adversary.corrupt`,
the aggregation, the step and :func:`diagnostic_sums` on its shard. Every random draw of round
t derives from (seed, t): every process computes the same answer, and a resumed run ends with
the numbers of an uninterrupted one.

The round computes on theta's device (:mod:`byzsgd.engine.placement`): the minibatches, the
workers' vectors, the received matrix, the attack's rows, the rule and the step are there.
Who is Byzantine is drawn on the CPU, with the other seeded draws, and stays there (a few
indices, the same on every device).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from byzsgd.engine.placement import CPU
from byzsgd.engine.server import Server, learning_rate, sgd_step
from byzsgd.metrics import byzantine_selected, diagnostics_from_sums, direction_sums
from byzsgd.seeding import derive_seed, generator_for, seed_round_dropout

if TYPE_CHECKING:
    from byzsgd.data import Dataset
    from byzsgd.engine.backdoor import BackdoorTask
    from byzsgd.engine.flatmodel import FlatModel
    from byzsgd.engine.momentum import WorkerMomentum
    from byzsgd.engine.sampler import WorkerSampler
    from byzsgd.threat import ThreatModel


@dataclass
class Step:
    """The server's update of round t: ``theta - lr_t * v`` (momentum, weight decay:
    :func:`~byzsgd.engine.server.sgd_step`) in gradient mode; in model-averaging mode the
    aggregate is the new theta."""

    mode: str
    lr: float
    schedule: str = "constant"
    fading: float = 1.0
    momentum: float = 0.0
    weight_decay: float = 0.0

    def lr_at(self, t: int) -> float:
        """The step size of round t."""
        return learning_rate(self.lr, self.schedule, t, self.fading)

    def __call__(self, theta: Tensor, aggregate: Tensor, lr: float,
                 buffer: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``(theta_{t+1}, momentum buffer)``."""
        if self.mode == "gradient":
            return sgd_step(theta, aggregate, lr, buffer, momentum=self.momentum,
                            weight_decay=self.weight_decay)
        return aggregate.clone(), buffer


@dataclass
class Workers:
    """The n workers' honest computation: worker i's minibatch of draw t is
    ``sampler.indices(t)[i]``; its vector is the gradient of the model at theta_t, or its
    parameters after ``local_steps`` of local SGD (model averaging). A data attack (label
    flipping) poisons the labels of the workers it is given."""

    n: int
    flat: FlatModel
    dataset: Dataset
    sampler: WorkerSampler
    seed: int
    mode: str = "gradient"
    local_steps: int = 1
    weight_decay: float = 0.0

    def batch(self, index: int, rows: Sequence[int] | None = None, *,
              flip: Tensor | None = None,
              label_map: Callable[[Tensor, int], Tensor] | None = None
              ) -> tuple[Tensor, Tensor]:
        """The training-sample indices (k, b) of draw ``index`` for the workers ``rows`` (all
        when None), and their labels, mapped by ``label_map`` for the workers in ``flip``."""
        idx = self.sampler.indices(index)
        workers = None if rows is None else torch.as_tensor(list(rows), dtype=torch.long,
                                                             device=idx.device)
        if workers is not None:
            idx = idx[workers]
        y = self.dataset.y_train[idx]
        if flip is not None and flip.numel() and label_map is not None:
            flip = flip.to(idx.device)
            poisoned = flip if workers is None else torch.isin(workers, flip).nonzero().flatten()
            if poisoned.numel():
                y = y.clone()
                y[poisoned] = label_map(y[poisoned], self.dataset.num_classes)
        return idx, y

    def vectors(self, theta: Tensor, t: int, lr: float, rows: Sequence[int] | None = None, *,
                flip: Tensor | None = None,
                label_map: Callable[[Tensor, int], Tensor] | None = None,
                out: Tensor | None = None) -> Tensor:
        """What the workers ``rows`` (all when None) send in round t if honest, one row
        each, written into ``out`` when given. The workers' dropout masks are drawn from
        (seed, t)."""
        seed_dropout(self.seed, t, theta.device)
        flat = self.flat
        if self.mode == "gradient":
            samples, y = self.batch(t, rows, flip=flip, label_map=label_map)
            return flat.sample_gradients(theta, samples, y, out)
        k = self.n if rows is None else len(rows)
        thetas = theta.expand(k, -1).clone()
        for step in range(self.local_steps):
            samples, y = self.batch(t * self.local_steps + step, rows, flip=flip,
                                    label_map=label_map)
            grads = flat.local_gradients(thetas, flat.inputs(samples), y)
            thetas = thetas - lr * (grads + self.weight_decay * thetas)
        return thetas if out is None else out.copy_(thetas)


@dataclass(frozen=True)
class Draw:
    """Round t's threat: whether the attack runs, the Byzantine workers, and the attack's
    generator (drawn from (seed, "attack", t), already advanced past the draw of the rows)."""

    attacked: bool
    byzantine: Tensor
    generator: torch.Generator


@dataclass
class Adversary:
    """The Byzantine workers: who they are each round (``threat``) and what they send
    (``attack``, None for none); a backdoor task gives the attack its objective."""

    threat: ThreatModel
    attack: Any | None
    seed: int
    n: int
    f: int
    flat: FlatModel | None = None
    mode: str = "gradient"
    backdoor: BackdoorTask | None = None

    def draw(self, t: int) -> Draw:
        """Every process computes the same answer from (seed, t): workers know by
        themselves whether they are Byzantine this round, and the server which rows are."""
        attacked = self.attack is not None and self.threat.active(t)
        g = generator_for(self.seed, "attack", t)
        byz = self.threat.byzantine_rows(t, g) if attacked else torch.empty(0, dtype=torch.long,
                                                                             device=CPU)
        return Draw(attacked, byz, g)

    @property
    def dimensional(self) -> bool:
        """Whether the attack corrupts values anywhere (generalized model)."""
        return self.attack is not None and self.attack.dimensional

    def label_map(self) -> Callable[[Tensor, int], Tensor] | None:
        """A data attack's label map for the Byzantine workers' labels (label flipping)."""
        return getattr(self.attack, "label_map", None)

    def reads_byzantine_vectors(self) -> bool:
        """Whether an attack round uses the vectors the Byzantine workers would send if
        honest: a dimensional attack corrupts the whole received matrix, a data attack
        trains on poisoned labels, an attack with ``knowledge="own"`` estimates from its own
        gradients (A Little Is Enough, Algorithm 3). Otherwise only honest rows are
        computed."""
        attack = self.attack
        return (attack is None or attack.dimensional or self.label_map() is not None
                or attack.knowledge == "own")

    def backdoor_loss(self, theta: Tensor, t: int,
                      lr: float) -> Callable[[Tensor], Tensor] | None:
        """The attacker's objective for a candidate vector v: cross-entropy of the model v
        would produce (theta - lr * v for a gradient, v itself for parameters) on the
        backdoor inputs with the attacker's labels."""
        if self.backdoor is None or self.flat is None:
            return None
        x, y = self.backdoor.attacker_batch(t)
        flat = self.flat
        if self.mode == "gradient":
            return lambda v: flat.loss(theta - lr * v, x, y)
        return lambda v: flat.loss(v, x, y)

    def forge(self, draw: Draw, t: int, theta: Tensor, lr: float, rule: Any, *,
              honest: Tensor | None, own: Tensor | None, f: int, n: int | None,
              out: Tensor | None = None, honest_ids: Tensor | None = None) -> Tensor:
        """The f Byzantine rows (f, d) a classic attack builds from what it knows: ``own``
        (the honest vectors of the f Byzantine workers; None when the attack does not read
        them) and, when given, the ``honest`` rows, whose workers ``honest_ids`` names (for
        an attack that follows a worker across rounds: mimic); ``rule`` is the deployed rule
        (adaptive attacks query it). Written into ``out`` when given."""
        assert self.attack is not None
        return self.attack(honest=honest, own=own, f=f, n=n, rule=rule,
                           generator=draw.generator,
                           backdoor_loss=self.backdoor_loss(theta, t, lr), out=out,
                           honest_ids=honest_ids)

    def corrupt(self, draw: Draw, vectors: Tensor) -> Tensor:
        """The (n, d) matrix after a dimensional attack corrupted values of ``vectors``."""
        assert self.attack is not None
        corrupted, _ = self.attack(gradients=vectors, f=self.f, n=self.n,
                                   generator=draw.generator)
        return corrupted


class Workspace:
    """The received matrix of a round, laid out for speed: the honest rows first (in worker
    order), then the Byzantine ones. The workers' vectors are computed in place by one
    batched call and read in place by the attack, and its f rows forged in place. Every rule
    is invariant under a permutation of its rows (tests/test_aggregators.py); the rows a rule
    selected are mapped back to workers with :meth:`workers_of`. The matrix is on ``device``
    (the run's); which worker is on which row is kept on the CPU."""

    def __init__(self, n: int, d: int, dtype: torch.dtype = torch.float32,
                 device: torch.device = CPU) -> None:
        self.n, self.d, self.dtype, self.device = n, d, dtype, device

    def arrange(self, byzantine: Tensor, *, all_rows: bool) -> Workspace:
        """A fresh matrix for a round whose Byzantine workers are ``byzantine``; the
        Byzantine workers' own honest vectors are computed too when ``all_rows``."""
        honest_mask = torch.ones(self.n, dtype=torch.bool, device=CPU)
        honest_mask[byzantine] = False
        honest_rows = honest_mask.nonzero().flatten()
        self.k = honest_rows.numel()
        self.worker_of_row = torch.cat([honest_rows, byzantine])
        #: The workers whose honest vectors are computed, in row order.
        self.computed = (self.worker_of_row if all_rows else honest_rows).tolist()
        self.matrix = torch.empty((self.n, self.d), dtype=self.dtype, device=self.device)
        return self

    @property
    def computed_rows(self) -> Tensor:
        return self.matrix[:len(self.computed)]

    @property
    def honest(self) -> Tensor:
        return self.matrix[:self.k]

    @property
    def own(self) -> Tensor | None:
        """The Byzantine workers' honest vectors (a copy), when computed."""
        return self.matrix[self.k:].clone() if len(self.computed) > self.k else None

    @property
    def byzantine(self) -> Tensor:
        return self.matrix[self.k:]

    def workers_of(self, selected: list[Tensor] | None) -> list[Tensor] | None:
        """Rows a rule selected (per shard), as workers."""
        if selected is None:
            return None
        return [self.worker_of_row[rows.cpu()] for rows in selected]


def round_(t: int, theta: Tensor, buffer: Tensor | None, *, workers: Workers,
           adversary: Adversary, server: Server, step: Step, workspace: Workspace,
           momentum: WorkerMomentum | None = None
           ) -> tuple[Tensor, Tensor | None, dict[str, float]]:
    """Round t from theta_t and the server's momentum ``buffer``: ``(theta_{t+1}, buffer,
    record)``, the record being the round's rounds.csv row (lr, whether attacked, the
    direction diagnostics, the Byzantine rows the rule selected). ``server`` aggregates
    (per parameter shard) with the rule. With worker ``momentum`` (:mod:`.momentum`) every
    worker's gradient updates its buffer and the rows sent, read by the attack and
    aggregated are the momenta."""
    # 1. who is Byzantine this round
    draw = adversary.draw(t)
    byz = draw.byzantine
    lr = step.lr_at(t)
    # 2. the workers' honest vectors at theta_t (the Byzantine workers' own only when the
    #    attack reads them, or every worker's when each keeps a momentum)
    reads_own = not draw.attacked or adversary.reads_byzantine_vectors()
    ws = workspace.arrange(byz, all_rows=reads_own or momentum is not None)
    flip = byz if draw.attacked and adversary.label_map() is not None else None
    workers.vectors(theta, t, lr, ws.computed, flip=flip, label_map=adversary.label_map(),
                    out=ws.computed_rows)
    if momentum is not None:
        momentum.update(ws.computed, ws.computed_rows)
    # 3. the attack
    received = ws.matrix
    if draw.attacked and adversary.dimensional:
        received = adversary.corrupt(draw, received)  # a copy: the honest rows stay correct
    elif draw.attacked:
        adversary.forge(draw, t, theta, lr, server.rule, honest=ws.honest,
                        own=ws.own if reads_own else None,
                        f=byz.numel(), n=workers.n, out=ws.byzantine,
                        honest_ids=ws.worker_of_row[:ws.k])
    # 4. aggregate and step
    aggregate = server.aggregate(received)
    theta_next, buffer = step(theta, aggregate.value, lr, buffer)
    # 5. measure
    truth = ws.honest.mean(dim=0)
    diag = diagnostics_from_sums(diagnostic_sums(step.mode, theta, truth, aggregate.value))
    selected = byzantine_selected(ws.workers_of(aggregate.selected), byz)
    return theta_next, buffer, {"round": t, "lr": lr, "attacked": int(draw.attacked), **diag,
                                "byzantine_selected": selected}


def diagnostic_sums(mode: str, theta: Tensor, truth: Tensor, aggregate: Tensor) -> Tensor:
    """:func:`~byzsgd.metrics.direction_sums` of the aggregate and the mean correct vector
    ``truth``: gradients directly, in model-averaging mode the implied updates
    theta_t - vector (on a shard of the coordinates, that shard's part of the sums)."""
    if mode == "gradient":
        return direction_sums(truth, aggregate)
    return direction_sums(theta - truth, theta - aggregate)


def seed_dropout(seed: int, t: int, device: torch.device) -> None:
    """Seed the generator the workers' dropout masks of round t are drawn from: torch's CPU
    generator (:func:`~byzsgd.seeding.seed_round_dropout`), and on CUDA or MPS the device's
    own."""
    seed_round_dropout(seed, t)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.default_generators[index].manual_seed(derive_seed(seed, "dropout", t))
    elif device.type == "mps":
        torch.mps.manual_seed(derive_seed(seed, "dropout", t))
