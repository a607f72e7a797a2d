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

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from byzsgd._memory import keep_freed_memory
from byzsgd.config import ConfigError, to_toml
from byzsgd.engine.round import (
    corrupt,
    flips_labels,
    forge,
    honest_vectors,
    lr_of,
    reads_byzantine_vectors,
    round_diagnostics,
    round_threat,
)
from byzsgd.engine.setup import Setup, build
from byzsgd.metrics import backdoor_success, byzantine_selected, cross_entropy, topk_accuracy
from byzsgd.results import (
    CsvLog,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    truncate_rows,
    write_json,
)
from byzsgd.seeding import seed_round_dropout

__all__ = ["METRIC_COLUMNS", "ROUND_COLUMNS", "Setup", "Simulation", "build"]

ROUND_COLUMNS = ["round", "lr", "attacked", "inner_product", "cosine", "aggregate_norm",
                 "distance", "byzantine_selected"]
METRIC_COLUMNS = ["round", "epoch", "lr", "test_accuracy", "test_top3", "test_loss",
                  "train_loss", "backdoor_success", "inner_product", "cosine",
                  "negative_inner_fraction", "aggregate_norm", "distance",
                  "byzantine_selected", "rounds_per_s"]


class Simulation:
    """The round loop of one run, writing its results under ``out``.

    The distributed runtime's lead server subclasses it, replacing :meth:`round` (and the
    state hooks), so that both write the same files with the same loop.
    """

    #: Columns of rounds.csv and metrics.csv.
    round_columns = ROUND_COLUMNS
    metric_columns = METRIC_COLUMNS

    def __init__(self, setup: Setup, out: Path) -> None:
        keep_freed_memory()  # the round's large tensors are reused, not re-faulted
        self.s = setup
        self.cfg = setup.config
        self.out = out
        self.theta = setup.flat.initial()

    # -- one round ---------------------------------------------------------------------------

    def lr(self, t: int) -> float:
        return lr_of(self.s, t)

    def honest_vectors(self, t: int, flip: Tensor | None, rows: list[int] | None = None,
                       out: Tensor | None = None) -> Tensor:
        """What the workers ``rows`` (all when None) would send if honest: gradients at
        theta_t, or parameters after ``local_steps`` of local SGD (model averaging). ``flip``
        marks workers whose labels are poisoned by a data attack (label flipping). Written
        into ``out`` when given."""
        return honest_vectors(self.s, self.theta, t, flip, rows, out)

    def round(self, t: int) -> dict[str, float]:
        cfg, s = self.cfg, self.s
        seed_round_dropout(cfg.seed, t)
        attacked, byz, g = round_threat(s, t)
        honest_mask = torch.ones(cfg.workers, dtype=torch.bool)
        honest_mask[byz] = False
        honest_rows = honest_mask.nonzero().flatten()
        k = honest_rows.numel()
        # The received matrix holds the honest rows first (in worker order), then the
        # Byzantine ones: the workers' vectors are computed in place and read in place by the
        # attack, and its f rows forged in place. Every rule is invariant under a permutation
        # of its rows (tests/test_aggregators.py); the rows a rule selected are mapped back
        # to workers below.
        worker_of_row = torch.cat([honest_rows, byz])
        # The Byzantine workers' honest vectors only when the attack reads them (own
        # knowledge, label flipping, dimensional corruption): do not compute what nobody reads.
        computed = worker_of_row if not attacked or reads_byzantine_vectors(s) else honest_rows
        sent = torch.empty((cfg.workers, s.flat.d), dtype=self.theta.dtype)
        self.honest_vectors(t, byz if attacked and flips_labels(s) else None,
                            computed.tolist(), out=sent[:computed.numel()])
        honest = sent[:k]
        if attacked and s.attack.dimensional:
            sent = corrupt(s, sent, g)  # a corrupted copy: honest keeps the correct values
        elif attacked:
            own = sent[k:].clone() if computed.numel() > k else None
            forge(s, t, self.theta, g, honest=honest, own=own, f=byz.numel(),
                  n=cfg.workers, out=sent[k:])
        truth = honest.mean(dim=0)
        aggregate = s.server.aggregate(sent)
        lr = self.lr(t)
        diag = round_diagnostics(s, self.theta, truth, aggregate.value)
        if cfg.mode == "gradient":
            self.theta = s.server.step(self.theta, aggregate.value, lr)
        else:
            self.theta = aggregate.value.clone()
        selected = aggregate.selected
        if selected is not None:
            selected = [worker_of_row[rows] for rows in selected]
        return {"round": t, "lr": lr, "attacked": int(attacked), **diag,
                "byzantine_selected": byzantine_selected(selected, byz)}

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

    # -- state and reports -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The training state a checkpoint holds (besides the loop's own counters)."""
        return {"theta": self.theta, "server": self.s.server.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = state["theta"]
        self.s.server.load_state_dict(state["server"])

    def interval_means(self, rows: list[dict[str, float]]) -> dict[str, float]:
        """The round diagnostics since the last evaluation, as metrics.csv reports them."""
        return _interval_means(rows)

    def summary_extra(self) -> dict[str, Any]:
        """Entries added to summary.json (none here)."""
        return {}

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
            self.load_state_dict(state)
            start, best, elapsed, history = (state["round"], state["best"], state["elapsed"],
                                             state["history"])
            # metrics.csv rows count rounds completed, rounds.csv rows the round index
            truncate_rows(files["metrics.csv"], start + 1)
            truncate_rows(files["rounds.csv"], start)
        else:
            for name in ("metrics.csv", "rounds.csv", "checkpoint.pt"):
                files[name].unlink(missing_ok=True)
        atomic_write(files["config.toml"], to_toml(cfg.to_dict()))
        metrics = CsvLog(files["metrics.csv"], self.metric_columns)
        rounds = CsvLog(files["rounds.csv"], self.round_columns)
        summary: dict[str, Any] = {"status": "running", "d": self.s.flat.d,
                                   "config": cfg.to_json()}
        interval: list[dict[str, float]] = []
        last: dict[str, float] = {}

        def checkpoint(t: int) -> None:
            save_checkpoint(files["checkpoint.pt"], {
                "config": cfg.to_dict(), "round": t, **self.state_dict(), "best": best,
                "elapsed": elapsed, "history": history})

        def record(t: int) -> None:
            nonlocal best, last
            row = {"round": t, "epoch": self.s.sampler.epoch(t), "lr": self.lr(max(t - 1, 0)),
                   **self.evaluate(), **self.interval_means(interval)}
            row["rounds_per_s"] = history["rounds"] / elapsed if elapsed > 0 else float("nan")
            metrics.write(row)
            best = max(best, row["test_accuracy"])
            last = row
            interval.clear()
            checkpoint(t)
            summary.update(_summary(row, best, t, elapsed, history), **self.summary_extra())
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
        summary.update(self.summary_extra())
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
