"""A run, assembled from its config and checked before training: :class:`Setup`, :func:`build`.

The simulator (:mod:`.simulator`), the distributed servers and workers all build the same
:class:`Setup` from the same config, so that every process draws the same data split, model
initialization, rule, attack and threat model.

Everything is built on the CPU (the seeded draws: data split, initialization) and then placed
on the run's device (``config.device``; :mod:`.placement`): the model, the data set (when it
fits), the sampler's indices, the backdoor batches. Before anything trains, the round's
memory is checked against the device's free memory (:mod:`.memory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from byzsgd import aggregators, attacks, data, devices, models
from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.engine import memory, placement
from byzsgd.engine.backdoor import BackdoorTask
from byzsgd.engine.flatmodel import CALIBRATION_SAMPLES, FlatModel
from byzsgd.engine.momentum import WorkerMomentum
from byzsgd.engine.round import Adversary, Step, Workers
from byzsgd.engine.sampler import WorkerSampler
from byzsgd.engine.server import Server
from byzsgd.metrics import backdoor_success, cross_entropy, topk_accuracy
from byzsgd.seeding import generator_for
from byzsgd.threat import ThreatModel


@dataclass
class Setup:
    """Everything a run needs, built and checked from its config before training."""

    config: ExperimentConfig
    dataset: data.Dataset
    flat: FlatModel
    sampler: WorkerSampler
    server: Server
    threat: ThreatModel
    attack: Any | None
    backdoor: BackdoorTask | None
    #: A fixed sample of the training set on which the train loss is measured.
    train_probe: tuple[Tensor, Tensor] = field(repr=False)
    #: The device the run computes on (``config.device`` resolved).
    device: torch.device = placement.CPU

    @property
    def device_name(self) -> str:
        """The device as the run's summary records it (``"cuda:0"`` for ``auto``)."""
        return placement.device_name(self.device)

    # -- the phases of a round (engine/round.py), each reading only what it needs ----------

    def workers(self) -> Workers:
        cfg = self.config
        return Workers(n=cfg.workers, flat=self.flat, dataset=self.dataset,
                       sampler=self.sampler, seed=cfg.seed, mode=cfg.mode,
                       local_steps=cfg.local_steps, weight_decay=cfg.weight_decay)

    def adversary(self) -> Adversary:
        cfg = self.config
        return Adversary(threat=self.threat, attack=self.attack, seed=cfg.seed, n=cfg.workers,
                         f=cfg.byzantine, flat=self.flat, mode=cfg.mode,
                         backdoor=self.backdoor)

    def momentum(self, workers: Sequence[int] | None = None) -> WorkerMomentum | None:
        """The momentum buffers of ``workers`` (all when None) when ``worker_momentum`` is
        on (:mod:`.momentum`), else None."""
        cfg = self.config
        if not cfg.worker_momentum:
            return None
        return WorkerMomentum(cfg.worker_momentum,
                              range(cfg.workers) if workers is None else workers)

    def step(self) -> Step:
        cfg = self.config
        return Step(mode=cfg.mode, lr=cfg.lr, schedule=cfg.lr_schedule, fading=cfg.lr_fading,
                    momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def evaluate(self, theta: Tensor) -> dict[str, float]:
        """The model theta on the test set (top-1, top-3, loss), its loss on the training
        probe, and the backdoor's success rate (NaN without a backdoor task)."""
        ds = self.dataset
        logits = self.flat.predict(theta, ds.x_test)
        probe_x, probe_y = self.train_probe
        row = {"test_accuracy": topk_accuracy(logits, ds.y_test, 1),
               "test_top3": topk_accuracy(logits, ds.y_test, 3),
               "test_loss": cross_entropy(logits, ds.y_test),
               "train_loss": cross_entropy(self.flat.predict(theta, probe_x), probe_y),
               "backdoor_success": float("nan")}
        if self.backdoor is not None:
            x, y = self.backdoor.test_batch()
            row["backdoor_success"] = backdoor_success(self.flat.predict(theta, x), y)
        return row


def build(config: ExperimentConfig, *, free_memory: int | None = None) -> Setup:
    """Load the data, split it, build the model, rule, attack and threat model, on the
    config's device; :class:`~byzsgd.engine.memory.MemoryBoundError` when a round cannot fit
    in the device's free memory (``free_memory`` bytes, measured when None)."""
    cfg = config.validate()
    device = devices.resolve(cfg.device)
    placement.repeatable(device)
    dataset = data.load(cfg.dataset, cfg.data_dir)
    if cfg.inputs == "standardized":
        dataset = dataset.standardized()
    model = models.build(cfg.model, dataset.input_shape, dataset.num_classes,
                         generator=generator_for(cfg.seed, "init"))
    flat = FlatModel(model.to(device))
    free = memory.free_bytes(device) if free_memory is None else free_memory
    needs = memory.round_needs(
        cfg.workers, flat.d, flat.initial().dtype, batch=cfg.batch_size, method=flat.method,
        activations=memory.activations_per_example(model, dataset.x_train[0].to(device)))
    memory.check(needs, free, placement.device_name(device))
    dataset, _ = placement.place_dataset(dataset, device,
                                         int(placement.DATA_FRACTION * (free - needs.total)))
    shards = data.partition(dataset.y_train.cpu(), cfg.workers, cfg.partition,
                            generator=generator_for(cfg.seed, "partition"),
                            alpha=cfg.partition_alpha, shards_per_worker=cfg.shards_per_worker)
    try:
        sampler = WorkerSampler(shards, cfg.batch_size, cfg.seed, device)
    except ValueError as e:
        raise ConfigError(f"batch_size: {e}") from None
    rule = aggregators.bind(cfg.aggregator, cfg.rule_f, pre=cfg.pre_aggregators,
                            round_seed=cfg.seed, **cfg.aggregator_params)
    server = Server(rule, flat.d, servers=cfg.servers, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay)
    attack = None
    if cfg.attack != "none":
        params = dict(cfg.attack_params)
        if cfg.knowledge is not None:
            params["knowledge"] = cfg.knowledge
        attack = attacks.get(cfg.attack, **params)
    threat = ThreatModel(n=cfg.workers, f=cfg.byzantine, selection=cfg.selection,
                         knowledge=cfg.knowledge,
                         model="generalized" if getattr(attack, "dimensional", False)
                         else "classic",
                         start_round=cfg.attack_start, stop_round=cfg.attack_stop)
    backdoor = None if cfg.backdoor == "none" else BackdoorTask(cfg.backdoor, dataset, cfg.seed,
                                                                device)
    g = generator_for(cfg.seed, "probe")
    probe = torch.randperm(len(dataset.y_train), generator=g)[: cfg.eval_train_samples]
    # the model's gradients read the training inputs in the form it computes fastest from
    # (sparse rows for a dense MLP on mostly-zero inputs, on the CPU: engine/sparse.py)
    flat.use_training_inputs(dataset.x_train)
    probe_x = placement.gather(dataset.x_train, probe, device)
    flat.calibration = probe_x[:CALIBRATION_SAMPLES]  # the server's BatchNorm statistics
    return Setup(cfg, dataset, flat, sampler, server, threat, attack, backdoor,
                 (probe_x, dataset.y_train[probe.to(device)]), device)
