"""Synchronous parameter-server SGD with Byzantine workers, simulated in one process.

One round t (Algorithm 1 of Fall of Empires and of Generalized Byzantine-tolerant SGD; in
``model-averaging`` mode Algorithm 1 of A Little Is Enough):

1. the server broadcasts theta_t; every worker draws its minibatch and computes its vector
   honestly: a gradient, or its parameters after local SGD steps (one batched call);
2. the threat model says which rows are Byzantine this round; the attack replaces them with
   what it builds from what it knows (generalized model: corrupts values anywhere);
3. the server aggregates with the rule and steps;
4. diagnostics of the round are logged; every ``eval_every`` rounds the model is evaluated,
   a metrics row is written and a checkpoint taken.

Every random draw of round t derives from (seed, t), so a resumed run ends with the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from byzsgd import aggregators, attacks, data, models
from byzsgd.config import ConfigError, ExperimentConfig, to_toml
from byzsgd.engine.backdoor import BackdoorTask
from byzsgd.engine.flatmodel import FlatModel
from byzsgd.engine.sampler import WorkerSampler
from byzsgd.engine.server import Server, learning_rate
from byzsgd.metrics import (
    backdoor_success,
    byzantine_selected,
    cross_entropy,
    direction_diagnostics,
    topk_accuracy,
)
from byzsgd.results import (
    CsvLog,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    truncate_rows,
    write_json,
)
from byzsgd.seeding import derive_seed, generator_for
from byzsgd.threat import ThreatModel

ROUND_COLUMNS = ["round", "lr", "attacked", "inner_product", "cosine", "aggregate_norm",
                 "distance", "byzantine_selected"]
METRIC_COLUMNS = ["round", "epoch", "lr", "test_accuracy", "test_top3", "test_loss",
                  "train_loss", "backdoor_success", "inner_product", "cosine",
                  "negative_inner_fraction", "aggregate_norm", "distance",
                  "byzantine_selected", "rounds_per_s"]


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


def build(config: ExperimentConfig) -> Setup:
    """Load the data, split it, build the model, rule, attack and threat model."""
    cfg = config.validate()
    dataset = data.load(cfg.dataset, cfg.data_dir)
    model = models.build(cfg.model, dataset.input_shape, dataset.num_classes,
                         generator=generator_for(cfg.seed, "init"))
    flat = FlatModel(model)
    shards = data.partition(dataset.y_train, cfg.workers, cfg.partition,
                            generator=generator_for(cfg.seed, "partition"),
                            alpha=cfg.partition_alpha, shards_per_worker=cfg.shards_per_worker)
    try:
        sampler = WorkerSampler(shards, cfg.batch_size, cfg.seed)
    except ValueError as e:
        raise ConfigError(f"batch_size: {e}") from None
    rule = aggregators.bind(cfg.aggregator, cfg.rule_f, **cfg.aggregator_params)
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
    backdoor = None if cfg.backdoor == "none" else BackdoorTask(cfg.backdoor, dataset, cfg.seed)
    g = generator_for(cfg.seed, "probe")
    probe = torch.randperm(len(dataset.y_train), generator=g)[: cfg.eval_train_samples]
    return Setup(cfg, dataset, flat, sampler, server, threat, attack, backdoor,
                 (dataset.x_train[probe], dataset.y_train[probe]))


class Simulation:
    """The round loop of one run, writing its results under ``out``."""

    def __init__(self, setup: Setup, out: Path) -> None:
        self.s = setup
        self.cfg = setup.config
        self.out = out
        self.theta = setup.flat.initial()

    # -- one round ---------------------------------------------------------------------------

    def lr(self, t: int) -> float:
        return learning_rate(self.cfg.lr, self.cfg.lr_schedule, t, self.cfg.lr_fading)

    def honest_vectors(self, t: int, flip: Tensor | None) -> Tensor:
        """What every worker would send if honest: gradients at theta_t, or parameters after
        ``local_steps`` of local SGD (model averaging). ``flip`` marks workers whose labels
        are poisoned by a data attack (label flipping)."""
        cfg, s = self.cfg, self.s
        if cfg.mode == "gradient":
            x, y = self._batch(t, flip)
            return s.flat.worker_gradients(self.theta, x, y)
        thetas = self.theta.expand(cfg.workers, -1).clone()
        for step in range(cfg.local_steps):
            x, y = self._batch(t * cfg.local_steps + step, flip)
            grads = s.flat.local_gradients(thetas, x, y)
            thetas = thetas - self.lr(t) * (grads + cfg.weight_decay * thetas)
        return thetas

    def _batch(self, index: int, flip: Tensor | None) -> tuple[Tensor, Tensor]:
        ds = self.s.dataset
        idx = self.s.sampler.indices(index)
        x, y = ds.x_train[idx], ds.y_train[idx]
        if flip is not None and flip.numel():
            y = y.clone()
            y[flip] = self.s.attack.label_map(y[flip], ds.num_classes)
        return x, y

    def backdoor_loss(self, t: int) -> Callable[[Tensor], Tensor] | None:
        """The attacker's objective for a candidate vector v: cross-entropy of the model v
        would produce (theta - lr * v for a gradient, v itself for parameters) on the
        backdoor inputs with the attacker's labels."""
        if self.s.backdoor is None:
            return None
        x, y = self.s.backdoor.attacker_batch(t)
        flat, theta, lr = self.s.flat, self.theta, self.lr(t)
        if self.cfg.mode == "gradient":
            return lambda v: flat.loss(theta - lr * v, x, y)
        return lambda v: flat.loss(v, x, y)

    def round(self, t: int) -> dict[str, float]:
        cfg, s = self.cfg, self.s
        torch.manual_seed(derive_seed(cfg.seed, "dropout", t))  # vmap's dropout draws
        attacked = s.attack is not None and s.threat.active(t)
        g = generator_for(cfg.seed, "attack", t)
        byz = s.threat.byzantine_rows(t, g) if attacked else torch.empty(0, dtype=torch.long)
        flip = byz if attacked and hasattr(s.attack, "label_map") else None
        vectors = self.honest_vectors(t, flip)
        honest_mask = torch.ones(cfg.workers, dtype=torch.bool)
        honest_mask[byz] = False
        sent = vectors
        if attacked and s.attack.dimensional:
            sent, _ = s.attack(gradients=vectors, f=cfg.byzantine, n=cfg.workers,
                               generator=g)
        elif attacked:
            sent = vectors.clone()
            sent[byz] = s.attack(honest=vectors[honest_mask], own=vectors[byz],
                                 f=int(byz.numel()), n=cfg.workers, rule=s.server.rule,
                                 generator=g, backdoor_loss=self.backdoor_loss(t))
        aggregate = s.server.aggregate(sent)
        lr = self.lr(t)
        truth = vectors[honest_mask].mean(dim=0)
        if cfg.mode == "gradient":
            diag = direction_diagnostics(truth, aggregate.value)
            self.theta = s.server.step(self.theta, aggregate.value, lr)
        else:  # compare the implied updates theta_t - vector
            diag = direction_diagnostics(self.theta - truth, self.theta - aggregate.value)
            self.theta = aggregate.value.clone()
        return {"round": t, "lr": lr, "attacked": int(attacked), **diag,
                "byzantine_selected": byzantine_selected(aggregate.selected, byz)}

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        s = self.s
        ds = s.dataset
        logits = s.flat.predict(self.theta, ds.x_test)
        probe_x, probe_y = s.train_probe
        row = {"test_accuracy": topk_accuracy(logits, ds.y_test, 1),
               "test_top3": topk_accuracy(logits, ds.y_test, 3),
               "test_loss": cross_entropy(logits, ds.y_test),
               "train_loss": cross_entropy(s.flat.predict(self.theta, probe_x), probe_y),
               "backdoor_success": float("nan")}
        if s.backdoor is not None:
            x, y = s.backdoor.test_batch()
            row["backdoor_success"] = backdoor_success(s.flat.predict(self.theta, x), y)
        return row

    # -- the run -----------------------------------------------------------------------------

    def run(self, *, resume: bool = False,
            progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        cfg, out = self.cfg, self.out
        out.mkdir(parents=True, exist_ok=True)
        files = {name: out / name for name in
                 ("metrics.csv", "rounds.csv", "config.toml", "summary.json", "checkpoint.pt")}
        start, best, elapsed, history = 0, -1.0, 0.0, {"negative": 0, "rounds": 0}
        if resume and files["checkpoint.pt"].exists():
            state = load_checkpoint(files["checkpoint.pt"])
            if state["config"] != cfg.to_dict():
                raise ConfigError(f"{out} holds a run of a different config; use another --out "
                                  f"or run without --resume to start over")
            self.theta = state["theta"]
            self.s.server.load_state_dict(state["server"])
            start, best, elapsed, history = (state["round"], state["best"], state["elapsed"],
                                             state["history"])
            # metrics.csv rows count rounds completed, rounds.csv rows the round index
            truncate_rows(files["metrics.csv"], start + 1)
            truncate_rows(files["rounds.csv"], start)
        else:
            for name in ("metrics.csv", "rounds.csv", "checkpoint.pt"):
                files[name].unlink(missing_ok=True)
        atomic_write(files["config.toml"], to_toml(cfg.to_dict()))
        metrics = CsvLog(files["metrics.csv"], METRIC_COLUMNS)
        rounds = CsvLog(files["rounds.csv"], ROUND_COLUMNS)
        summary: dict[str, Any] = {"status": "running", "d": self.s.flat.d,
                                   "config": json.loads(json.dumps(cfg.to_dict()))}
        interval: list[dict[str, float]] = []
        last: dict[str, float] = {}

        def checkpoint(t: int) -> None:
            save_checkpoint(files["checkpoint.pt"], {
                "config": cfg.to_dict(), "round": t, "theta": self.theta,
                "server": self.s.server.state_dict(), "best": best, "elapsed": elapsed,
                "history": history})

        def record(t: int) -> None:
            nonlocal best, last
            row = {"round": t, "epoch": self.s.sampler.epoch(t), "lr": self.lr(max(t - 1, 0)),
                   **self.evaluate(), **_interval_means(interval)}
            row["rounds_per_s"] = history["rounds"] / elapsed if elapsed > 0 else float("nan")
            metrics.write(row)
            best = max(best, row["test_accuracy"])
            last = row
            interval.clear()
            checkpoint(t)
            summary.update(_summary(row, best, t, elapsed, history))
            write_json(files["summary.json"], summary)

        try:
            if start == 0:
                record(0)
            for t in range(start, cfg.rounds):
                tic = time.perf_counter()
                diag = self.round(t)
                elapsed += time.perf_counter() - tic
                history["rounds"] += 1
                history["negative"] += int(diag["inner_product"] < 0)
                rounds.write(diag)
                interval.append(diag)
                if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
                    record(t + 1)
                if progress is not None:
                    progress(t + 1, last)
        finally:
            metrics.close()
            rounds.close()
        summary["status"] = "complete"
        write_json(files["summary.json"], summary)
        return summary


def _interval_means(rows: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("inner_product", "cosine", "aggregate_norm", "distance", "byzantine_selected"):
        values = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = sum(values) / len(values) if values else float("nan")
    out["negative_inner_fraction"] = (sum(r["inner_product"] < 0 for r in rows) / len(rows)
                                      if rows else float("nan"))
    return out


def _summary(row: dict[str, float], best: float, t: int, elapsed: float,
             history: dict[str, int]) -> dict[str, Any]:
    return {"rounds_done": t, "final_test_accuracy": row["test_accuracy"],
            "final_test_top3": row["test_top3"], "best_test_accuracy": best,
            "final_train_loss": row["train_loss"], "final_backdoor_success":
                row["backdoor_success"], "train_seconds": elapsed,
            "rounds_per_s": history["rounds"] / elapsed if elapsed > 0 else None,
            "negative_inner_fraction": history["negative"] / max(history["rounds"], 1)}
