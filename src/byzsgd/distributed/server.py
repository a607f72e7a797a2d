"""The parameter servers: S processes, server s owning the coordinates ``[a_s, b_s)``.

One round t, on every server s (:meth:`ShardServer.round`):

The steps are the phases of :func:`byzsgd.engine.round.round_`, around the network:

1. send ``ROUND(t, theta[a_s:b_s])`` to every worker (a worker still busy with an earlier
   round, or dead, is skipped: absent);
2. collect the workers' vectors (their shard) until all arrived or the deadline passed;
   missing, malformed or non-finite inputs are classified (:mod:`.faults`); missing and
   malformed rows become rows of NaN, which the robust rules treat as Byzantine;
3. the attack, as in the simulator: a classic attack's Byzantine workers (which rows, from
   the same ``ThreatModel.byzantine_rows(t, generator_for(seed, "attack", t))``) get
   ``KNOW``: what the attack may know -- their own rows, plus all honest rows if it is
   omniscient -- "spied on the network" by the server, then send their Byzantine rows; a
   dimensional attack (bit-flip, gambler) corrupts values on the wire: it is applied here,
   on receipt, with the same generator;
4. aggregate with the same :class:`~byzsgd.engine.server.Server` code (its own shard: what
   ``Server(servers=S)`` does per shard in the simulator), step, and report the round's
   diagnostics.

Server 0, the *lead* (:class:`LeadServer`), also drives the others (``STEP t``), merges
their reports, evaluates, checkpoints and writes the result files, run by the simulator's
own :class:`~byzsgd.engine.recorder.Recorder`: metrics.csv, rounds.csv, summary.json,
config.toml and checkpoint.pt as the simulator writes them (the
checkpoint holds the full theta and momentum buffer, so either backend resumes the other's
run), plus fault columns, ``faults.csv`` and ``timings.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from byzsgd.distributed import protocol
from byzsgd.distributed.faults import (
    ABSENT,
    MALFORMED,
    NONFINITE,
    OK,
    FaultLog,
    FaultPlan,
    validate,
)
from byzsgd.distributed.links import Event, accept_workers
from byzsgd.distributed.placement import to_host
from byzsgd.distributed.protocol import Channel, Kind, Message, Options
from byzsgd.distributed.state import load_rule_state, pack, rule_state, unpack
from byzsgd.engine.placement import CPU, to_device
from byzsgd.engine.recorder import METRIC_COLUMNS, ROUND_COLUMNS, Recorder
from byzsgd.engine.round import Draw, diagnostic_sums
from byzsgd.engine.server import Server
from byzsgd.engine.setup import Setup
from byzsgd.metrics import byzantine_selected, diagnostics_from_sums

log = logging.getLogger("byzsgd.distributed")

FAULT_COLUMNS = ["absent", "malformed", "nonfinite", "faults"]
TIMING_COLUMNS = ["round", "round_ms", "compute_ms", "communication_ms", "attack_ms",
                  "aggregation_ms"]
#: The numbers of a DIAG message before the per-worker status codes.
_DIAG_LEN = 9


@dataclass
class ShardReport:
    """What one server made of one round."""

    status: Tensor  # (n,) int64 status code per worker
    details: dict[int, tuple[int, str]]  # worker -> (server, why) for faulty inputs
    sums: Tensor  # float64 [<g,a>, |g|^2, |a|^2, |a-g|^2] on this shard
    selected: float  # Byzantine rows the rule selected on this shard (NaN: no selection)
    timing: dict[str, float]  # compute / exchange / attack / aggregation, in ms

    def encode(self) -> Tensor:
        t = self.timing
        head = [*self.sums.tolist(), self.selected, t["compute"], t["exchange"], t["attack"],
                t["aggregation"]]
        return torch.cat([torch.tensor(head, dtype=torch.float64), self.status.double()])

    @classmethod
    def decode(cls, values: Tensor, server: int) -> ShardReport:
        v = values.reshape(-1)
        status = v[_DIAG_LEN:].long()
        names = ("compute", "exchange", "attack", "aggregation")
        timing = dict(zip(names, v[5:_DIAG_LEN].tolist(), strict=True))
        details = {w: (server, "") for w in (status != OK).nonzero().flatten().tolist()}
        return cls(status, details, v[:4].clone(), float(v[4]), timing)


class ShardServer:
    """Server ``index`` of a run: its shard of theta and of the momentum buffer, its links
    to the workers, and its part of every round."""

    def __init__(self, setup: Setup, index: int, opts: Options) -> None:
        cfg = setup.config
        self.s = setup
        self.cfg = cfg
        self.index = index
        self.opts = opts
        self.a, self.b = setup.server.shards[index]
        self.width = self.b - self.a
        self.single = cfg.servers == 1
        self.server = Server(setup.server.rule, self.width)  # aggregates this shard
        self.adversary = setup.adversary()
        self.step = setup.step()
        self.buffer: Tensor | None = None  # this shard of the momentum buffer
        self.theta = setup.flat.initial()[self.a:self.b].clone()
        #: Where this server aggregates: its model's device (``placement``); the rows arrive
        #: in host memory and go there in one copy per round.
        self.device = self.theta.device
        #: With ``worker_momentum``: this shard of the last momentum each worker sent (n,
        #: width), kept for checkpoints; None before the first round.
        self.momenta: Tensor | None = None
        self._send_momenta = False  # resumed: tell each worker its buffer with the next ROUND
        attack = self.adversary.attack
        #: Server 0 keeps the attack's state across rounds (mimic), which the Byzantine
        #: workers send back with their rows and get with the next KNOW.
        self.attack_keeps_state = (index == 0 and attack is not None
                                   and not self.adversary.dimensional
                                   and callable(getattr(attack, "state_dict", None)))
        self.attack_state: dict[str, Any] | None = None
        blob = 16 * setup.flat.d + 65536 if self.attack_keeps_state else 0
        self.events: queue.Queue[Event] = queue.Queue()
        self.links = accept_workers(index, cfg.workers, self.events,
                                    capacity=2 * 4 * self.width + 4096 + blob,
                                    connect=opts.connect)
        #: Workers that answered the last round: they took its messages (even if the sending
        #: thread has not finished yet), so the next round is queued for them.
        self.answered: set[int] = set()
        # the received rows, reused: filled in host memory (pinned for a GPU), then copied
        self._host = torch.empty(cfg.workers, self.width, pin_memory=self.device.type == "cuda")
        self._matrix = self._host if self.device.type == "cpu" else \
            torch.empty(cfg.workers, self.width, device=self.device)

    # -- one round ---------------------------------------------------------------------------

    def round(self, t: int) -> ShardReport:
        cfg = self.cfg
        n = cfg.workers
        start = time.perf_counter()
        draw = self.adversary.draw(t)
        byz = draw.byzantine
        status = torch.zeros(n, dtype=torch.long)
        details: dict[int, tuple[int, str]] = {}

        def fault(w: int, code: int, why: str) -> None:
            if code > status[w]:
                status[w] = code
                details[w] = (self.index, why)

        # 1-2. theta out, vectors in
        sent = set()
        host_theta = to_host(self.theta)  # staged once for all workers
        out = Message(Kind.ROUND, t, [host_theta])
        momenta = self.momenta if self._send_momenta else None
        self._send_momenta = False
        for w, link in enumerate(self.links):
            if momenta is not None:  # resumed: worker w's buffer travels with its ROUND
                out = Message(Kind.ROUND, t, [host_theta, momenta[w:w + 1]])
            if link.post(out, queue_behind=w in self.answered):
                sent.add(w)
            else:
                fault(w, ABSENT, link.reason or "still busy with an earlier round")
        got = self._collect(t, Kind.VEC, sent)
        self.answered = {w for w, ev in got.items() if not ev.dead}
        vectors = self._host.fill_(float("nan"))
        compute = 0.0
        for w in sent:
            code, row, why = self._classify(t, got.get(w), Kind.VEC)
            fault(w, code, why)
            if row is not None:
                vectors[w] = row
                compute = max(compute, got[w].extra / 1e3)
                if self.cfg.worker_momentum:  # the worker's momentum, for checkpoints
                    if self.momenta is None:
                        self.momenta = torch.zeros(n, self.width)
                    self.momenta[w] = row
        if self._matrix is not self._host:
            vectors = self._matrix.copy_(vectors)
        exchange = time.perf_counter()
        if not bool(((status == OK) | (status == NONFINITE)).any()):
            log.error("!!! round %d: no worker's vector reached server %d: its shard of theta "
                      "stays as it is", t, self.index)
            nan = float("nan")
            timing = {"compute": 0.0, "exchange": 1e3 * (exchange - start), "attack": 0.0,
                      "aggregation": 0.0}
            return ShardReport(status, details, torch.full((4,), nan, dtype=torch.float64), nan,
                               timing)

        # 3. the attack
        honest = torch.ones(n, dtype=torch.bool)
        honest[byz] = False
        received = vectors
        if draw.attacked and self.adversary.dimensional:
            received = self._corrupt(draw, vectors)
        elif draw.attacked and byz.numel():
            received = self._byzantine_rows(t, vectors, byz, honest, status, sent, fault)
        attack = time.perf_counter()

        # 4. aggregate and step
        theta = self.theta
        aggregate = self.server.aggregate(received)
        self.theta, self.buffer = self.step(theta, aggregate.value, self.step.lr_at(t),
                                            self.buffer)
        done = time.perf_counter()
        correct = honest & (status == OK)
        if bool(correct.all()):
            truth = vectors.mean(dim=0)
        elif bool(correct.any()):
            truth = vectors[correct].mean(dim=0)
        else:
            truth = torch.full((self.width,), float("nan"), device=self.device)
        timing = {"compute": compute, "exchange": 1e3 * (exchange - start),
                  "attack": 1e3 * (attack - exchange), "aggregation": 1e3 * (done - attack)}
        return ShardReport(status, details, diagnostic_sums(cfg.mode, theta, truth,
                                                           aggregate.value).cpu(),
                           byzantine_selected(aggregate.selected, byz), timing)

    def _collect(self, t: int, kind: Kind, expected: set[int]) -> dict[int, Event]:
        """The events of ``expected`` workers for (t, kind) until all came or the deadline
        passed. Late messages of earlier rounds are dropped."""
        deadline = time.monotonic() + self.opts.deadline
        waiting = set(expected)
        got: dict[int, Event] = {}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                ev = self.events.get(timeout=remaining)
            except queue.Empty:
                break
            if ev.worker not in waiting or (not ev.dead and not ev.error and ev.round < t):
                continue  # a worker not asked this phase, or a stale message
            got[ev.worker] = ev
            waiting.discard(ev.worker)
        return got

    def _classify(self, t: int, ev: Event | None, kind: Kind) -> tuple[int, Tensor | None, str]:
        if ev is None:
            return ABSENT, None, f"nothing by the {self.opts.deadline:g} s deadline"
        if ev.dead:
            return ABSENT, None, ev.error
        if ev.error:
            return MALFORMED, None, ev.error
        if ev.kind != kind:
            return MALFORMED, None, f"message kind {ev.kind} instead of {int(kind)}"
        if ev.round != t:
            return MALFORMED, None, f"round {ev.round} instead of {t}"
        return validate(ev.parts, self.width)

    def _corrupt(self, draw: Draw, vectors: Tensor) -> Tensor:
        """A dimensional attack on the received values, drawing what it draws in the
        simulator: on the full (n, d) matrix (this shard embedded in zeros: both attacks
        corrupt each value independently of the others)."""
        if self.single:
            return self.adversary.corrupt(draw, vectors)
        full = torch.zeros(vectors.shape[0], self.s.flat.d, device=vectors.device)
        full[:, self.a:self.b] = vectors
        return self.adversary.corrupt(draw, full)[:, self.a:self.b]

    def _byzantine_rows(self, t: int, vectors: Tensor, byz: Tensor, honest: Tensor,
                        status: Tensor, sent: set[int],
                        fault: Callable[[int, int, str], None]) -> Tensor:
        """Tell this round's Byzantine workers what the attack may know, and put the rows
        they send back in their place."""
        arrived = (status == OK) | (status == NONFINITE)
        own = [w for w in byz.tolist() if arrived[w]]
        seen = []
        if getattr(self.adversary.attack, "knowledge", None) == "omniscient":
            seen = (honest & arrived).nonzero().flatten().tolist()
        index = torch.tensor(own + seen, dtype=torch.long)
        parts = [index, vectors[index]]
        if self.attack_state is not None:  # the colluding attack's state across rounds
            parts.append(pack(self.attack_state))
        know = Message(Kind.KNOW, t, parts, aux=len(own))
        for w in byz.tolist():
            if w in sent:
                self.links[w].post(know, queue_behind=True)
        got = self._collect(t, Kind.BYZ, set(own))
        received = vectors.clone()
        received[byz] = float("nan")
        state: dict[str, Any] | None = None
        for w in own:
            ev = got.get(w)
            if ev is not None and not ev.dead and not ev.error and ev.kind == Kind.BYZ \
                    and ev.aux == protocol.ABSTAIN:
                fault(w, ABSENT, "abstained from the attack")
                continue
            if self.attack_keeps_state and ev is not None and ev.parts is not None \
                    and len(ev.parts) == 2:  # its row, and the attack's state after it
                blob, ev = ev.parts[1], dataclasses.replace(ev, parts=ev.parts[:1])
                if state is None:
                    try:
                        state = unpack(blob)
                    except ValueError as e:
                        fault(w, MALFORMED, f"Byzantine row: attack state: {e}")
            code, row, why = self._classify(t, ev, Kind.BYZ)
            if code in (ABSENT, MALFORMED):
                fault(w, code, f"Byzantine row: {why}")
            if row is not None:
                received[w] = row.to(received.device)  # non-finite values: the attack's
        if state is not None:
            self.attack_state = state
        return received

    # -- state -------------------------------------------------------------------------------

    def load(self, theta: Tensor, state: dict[str, Any]) -> None:
        """Start from this shard of theta and of ``state`` (:meth:`state`: the momentum
        buffer, the workers' momenta, the rule's and the attack's state)."""
        state = to_device(state, self.device)
        self.theta = theta.reshape(-1).to(self.device).clone()
        buffer = state.get("buffer")
        self.buffer = None if buffer is None else buffer.reshape(-1).clone()
        momenta = state.get("momenta")  # kept in host memory, as received
        self.momenta = None if momenta is None else momenta.cpu().clone()
        self._send_momenta = momenta is not None
        load_rule_state(self.server.rule, state.get("rule"))
        if self.attack_keeps_state:
            self.attack_state = state.get("attack")

    def state(self) -> dict[str, Any]:
        """This shard's state besides theta: the momentum buffer, the workers' momenta
        (n, width), the rule's state (centered clipping's center on this shard), and on
        server 0 the attack's."""
        return to_device({"buffer": self.buffer, "momenta": self.momenta,
                          "rule": rule_state(self.server.rule), "attack": self.attack_state},
                         CPU)

    def state_parts(self) -> list[Tensor]:
        return [self.theta, pack(self.state())]

    def stop(self, grace: float = 5.0) -> None:
        """Tell every worker the run is over; wait up to ``grace`` s for the live ones."""
        for link in self.links:
            link.post(Message(Kind.STOP, -1), queue_behind=True)
            link.close()
        end = time.monotonic() + grace
        while time.monotonic() < end and not all(link.idle or link.dead
                                                  for link in self.links):
            time.sleep(0.02)


def serve(setup: Setup, index: int, opts: Options) -> int:
    """Server ``index`` >= 1: run rounds when the lead says so, until it says stop."""
    shard = ShardServer(setup, index, opts)
    plan = FaultPlan("server", index)
    idle = opts.timedelta("idle")
    try:
        while True:
            msg = protocol.recv(0, Channel.BETWEEN_SERVERS, idle)
            if msg.kind == Kind.STEP:
                plan.before_send(msg.round)
                report = shard.round(msg.round)
                protocol.send(Message(Kind.DIAG, msg.round, [report.encode()]), 0,
                              Channel.BETWEEN_SERVERS, idle)
            elif msg.kind == Kind.SYNC:
                shard.load(msg.parts[0], unpack(msg.parts[1]))
            elif msg.kind == Kind.GATHER:
                protocol.send(Message(Kind.STATE, msg.round, shard.state_parts()), 0,
                              Channel.BETWEEN_SERVERS, idle)
            elif msg.kind == Kind.STOP:
                return 0
    finally:
        shard.stop()


class LeadServer:
    """Server 0: runs the distributed rounds, with a
    :class:`~byzsgd.engine.recorder.Recorder` writing the files (as for the simulator) plus
    fault columns, ``faults.csv`` and ``timings.csv``."""

    round_columns: ClassVar[list[str]] = ROUND_COLUMNS + FAULT_COLUMNS
    metric_columns: ClassVar[list[str]] = [*METRIC_COLUMNS[:-1], "faults", METRIC_COLUMNS[-1]]

    def __init__(self, setup: Setup, out: Path, opts: Options,
                 recorder: Recorder | None = None) -> None:
        self.s = setup
        self.cfg = setup.config
        self.out = out
        self.opts = opts
        self.theta = setup.flat.initial()
        self.shard = ShardServer(setup, 0, opts)
        self.others = range(1, self.cfg.servers)
        self.buffer: Tensor | None = None  # the full momentum buffer, when gathered
        #: The rest of the state, when gathered: the workers' momenta (n, d), the rule's state
        #: (full center), the attack's.
        self.extra: dict[str, Any] = {}
        self.gathered = True  # self.theta and self.buffer are current
        self.plan = FaultPlan("server", 0)
        self.faults = FaultLog(out / "faults.csv", self.cfg.rule_f)
        self.timings = out / "timings.csv"
        self._timeout = opts.timedelta("idle")
        self.recorder = recorder or lead_recorder(setup, out)

    def lr(self, t: int) -> float:
        return self.shard.step.lr_at(t)

    def run(self, *, resume: bool = False, overwrite: bool = False,
            progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        try:
            return self.recorder.run(self, resume=resume, overwrite=overwrite,
                                     progress=progress)
        finally:
            self.stop()

    # -- what the recorder asks ----------------------------------------------------------------

    def begin(self, state: dict[str, Any] | None, start: int) -> None:
        """Before round ``start``: reset (or truncate) the fault and timing files, and start
        every server from the same theta and buffer (the checkpoint's when resuming)."""
        if state is not None:
            device = self.theta.device
            self.theta = state["theta"].to(device)
            self.buffer = state["server"]["buffer"]
            self.buffer = None if self.buffer is None else self.buffer.to(device)
            self.faults.totals.update(state.get("faults", {}))
            self.extra = {"momenta": state.get("workers", {}).get("momentum"),
                          "rule": state["server"].get("rule"), "attack": state.get("attack")}
        self.gathered = True
        self.faults.reset(fresh=state is None, below=start)
        _restart_csv(self.timings, TIMING_COLUMNS, None if state is None else start)
        for s in range(self.cfg.servers):
            a, b = self.s.server.shards[s]
            shard = _shard_state(self.buffer, self.extra, a, b, whole=self.cfg.servers == 1)
            if s == 0:
                self.shard.load(self.theta[a:b], shard)
                continue
            shard["attack"] = None  # server 0 keeps the attack's state
            parts = [self.theta[a:b], pack(shard)]
            protocol.send(Message(Kind.SYNC, start, parts), s, Channel.BETWEEN_SERVERS,
                          self._timeout)

    def round(self, t: int) -> dict[str, float]:
        self.plan.before_send(t)
        tic = time.perf_counter()
        for s in self.others:
            protocol.send(Message(Kind.STEP, t), s, Channel.BETWEEN_SERVERS, self._timeout)
        reports = [self.shard.round(t)]
        for s in self.others:
            msg = protocol.recv(s, Channel.BETWEEN_SERVERS, self._timeout)
            reports.append(ShardReport.decode(msg.parts[0], s))
        self.gathered = False
        draw = self.shard.adversary.draw(t)
        byz = draw.byzantine
        status = torch.stack([r.status for r in reports]).amax(dim=0)
        details = {w: d for r in reversed(reports) for w, d in r.details.items()}
        counts = self.faults.record(t, status, details, byz)
        diag = diagnostics_from_sums(torch.stack([r.sums for r in reports]).sum(dim=0))
        selected = [r.selected for r in reports]
        row = {"round": t, "lr": self.lr(t), "attacked": int(draw.attacked), **diag,
               "byzantine_selected": sum(selected) / len(selected), **counts}
        self._time(t, time.perf_counter() - tic, reports)
        return row

    def evaluate(self) -> dict[str, float]:
        self._gather()
        return self.s.evaluate(self.theta)

    def state(self) -> dict[str, Any]:
        """What the simulator's checkpoint holds (so that either backend resumes the
        other's run): theta, the momentum buffer, the rule's state when it has one, the
        attack's when it has one, the workers' momenta when on; plus the fault totals."""
        self._gather()
        state: dict[str, Any] = {"theta": self.theta, "server": {"buffer": self.buffer},
                                 "faults": dict(self.faults.totals)}
        rule = self.extra.get("rule") or rule_state(self.shard.server.rule)
        if rule is not None:
            state["server"]["rule"] = rule
        attack = self.shard.adversary.attack
        if callable(getattr(attack, "state_dict", None)):
            state["attack"] = (self.extra["attack"] if self.extra.get("attack") is not None
                               else attack.state_dict())  # never attacked yet: its start
        if self.cfg.worker_momentum:
            state["workers"] = {"momentum": self.extra.get("momenta")}
        return state

    def report(self) -> dict[str, Any]:
        return {"backend": "distributed", "servers": self.cfg.servers,
                "faults": dict(self.faults.totals)}

    # -- the other servers --------------------------------------------------------------------

    def _gather(self) -> None:
        """The full theta and momentum buffer, from every server's shard."""
        if self.gathered:
            return
        thetas, states = [self.shard.theta], [self.shard.state()]
        for s in self.others:
            protocol.send(Message(Kind.GATHER, -1), s, Channel.BETWEEN_SERVERS, self._timeout)
            parts = protocol.recv(s, Channel.BETWEEN_SERVERS, self._timeout).parts
            thetas.append(parts[0])
            states.append(unpack(parts[1]))
        device = self.theta.device  # the other servers' shards arrive in host memory
        self.theta = torch.cat([p.reshape(-1).to(device) for p in thetas])
        self.buffer, self.extra = _joined_state(states)
        self.buffer = None if self.buffer is None else self.buffer.to(device)
        self.extra["attack"] = states[0]["attack"]
        self.gathered = True

    def _time(self, t: int, seconds: float, reports: list[ShardReport]) -> None:
        def worst(key: str) -> float:
            return max(r.timing[key] for r in reports)

        compute = worst("compute")
        row = [t, 1e3 * seconds, compute, max(worst("exchange") - compute, 0.0),
               worst("attack"), worst("aggregation")]
        with open(self.timings, "a", newline="") as fh:
            csv.writer(fh).writerow([f"{v:.4g}" if isinstance(v, float) else v for v in row])

    def stop(self) -> None:
        """End the run on every server and worker (best effort: some may be gone)."""
        for s in self.others:
            try:
                protocol.send(Message(Kind.STOP, -1), s, Channel.BETWEEN_SERVERS,
                              self.opts.timedelta("deadline"))
            except RuntimeError as e:
                log.warning("server %d did not take the stop: %s", s, str(e).splitlines()[0])
        self.shard.stop()


def _shard_state(buffer: Tensor | None, extra: dict[str, Any], a: int, b: int, *,
                 whole: bool) -> dict[str, Any]:
    """The columns [a, b) of the run's state (:meth:`ShardServer.state`): of the momentum
    buffer, the workers' momenta, and the rule's center (a rule's state is split by its
    ``center`` entry, the only one of the library's rules that depends on the coordinates)."""
    momenta, rule = extra.get("momenta"), extra.get("rule")
    if rule is not None and not whole and isinstance(rule.get("center"), Tensor):
        rule = {**rule, "center": rule["center"][a:b].clone()}
    return {"buffer": None if buffer is None else buffer[a:b],
            "momenta": None if momenta is None else momenta[:, a:b].clone(),
            "rule": rule, "attack": extra.get("attack")}


def _joined_state(states: list[dict[str, Any]]) -> tuple[Tensor | None, dict[str, Any]]:
    """The momentum buffer and the rest of the run's state from every server's shard (the
    inverse of :func:`_shard_state`)."""
    def cat(key: str, dim: int) -> Tensor | None:
        values = [s[key] for s in states]
        if any(v is None for v in values):
            return None
        return torch.cat([v.reshape(-1) if dim == 0 else v for v in values], dim=dim)

    rule = states[0]["rule"]
    if rule is not None and len(states) > 1 and isinstance(rule.get("center"), Tensor):
        centers = [s["rule"]["center"] for s in states]
        rule = {**rule, "center": None if any(c is None for c in centers)
                else torch.cat(centers)}
    return cat("buffer", 0), {"momenta": cat("momenta", 1), "rule": rule}


def lead_recorder(setup: Setup, out: Path) -> Recorder:
    """The recorder of the lead server: the simulator's files plus the fault columns."""
    return Recorder(out, setup.config, d=setup.flat.d, epoch=setup.sampler.epoch,
                    lr=setup.step().lr_at, round_columns=LeadServer.round_columns,
                    metric_columns=LeadServer.metric_columns, totals=("faults",))


def _restart_csv(path: Path, columns: list[str], below: int | None) -> None:
    """Write a fresh header (``below`` None), or keep the rows with round < ``below``."""
    rows: list[list[str]] = []
    if below is not None and path.exists():
        with open(path, newline="") as fh:
            rows = [r for r in list(csv.reader(fh))[1:] if r and int(r[0]) < below]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([columns, *rows])
