"""A worker process: honest computation, and the attack when it is Byzantine.

Each round t: take ``ROUND(t, shard)`` from every server and join the shards into theta_t;
compute this worker's vector exactly as the simulator computes its row (same minibatch
``sampler.indices(t)[i]``, same label flipping, same local steps); send each server its
shard. A worker knows by itself whether it is Byzantine in round t (the same
``Adversary.draw(t)`` as everyone); if it is, under a classic attack, it then takes
``KNOW`` from every server -- what the attack may know, joined over the shards -- runs the
attack with the round's generator as the simulator does, and sends its own Byzantine row
(all Byzantine workers compute the same f rows: they collude; each sends its own).

With ``worker_momentum`` the worker keeps its own momentum buffer (:mod:`byzsgd.engine.momentum`)
and sends its momentum as its honest vector, every round, Byzantine or not (the simulator's
rule). The servers keep the last momentum each worker sent, for checkpoints; a run resumed
with ``--resume`` restarts every process, and each worker takes its buffer from the checkpoint
with its first ``ROUND``. A worker that skipped rounds (it hung, and takes the newest round)
has not added those rounds' gradients to its buffer; a worker process that died is not
restarted within a run. An attack with state across rounds (mimic) is one colluding adversary:
server 0 keeps its state, sends it with each ``KNOW`` and takes it back with the rows.

Messages travel over one connection per server (:mod:`.wire`), opened by :meth:`Worker.connect`
(a worker is not a member of the servers' gloo group). Messages from a server come in order; a
worker that fell behind (it hung) takes the newest round and drops what is stale.
"""

from __future__ import annotations

import logging
import socket
import time

import torch
import torch.distributed as dist
from torch import Tensor

from byzsgd.distributed import rendezvous, wire
from byzsgd.distributed.faults import FaultPlan, garble
from byzsgd.distributed.protocol import ABSTAIN, Kind, Message, Options
from byzsgd.distributed.state import pack, unpack
from byzsgd.engine.round import Draw
from byzsgd.engine.setup import Setup

log = logging.getLogger("byzsgd.distributed")


class Worker:
    """Worker ``index`` (rank ``servers + index``) of a run."""

    def __init__(self, setup: Setup, index: int, opts: Options) -> None:
        self.s = setup
        #: Where this worker computes: its model's device (``placement``); what the servers
        #: send arrives in host memory and is moved there.
        self.device = setup.flat.initial().device
        self.cfg = setup.config
        self.workers = setup.workers()
        self.adversary = setup.adversary()
        self.step = setup.step()
        self.index = index
        #: This worker's momentum buffer (``worker_momentum``; None: off).
        self.momentum = setup.momentum([index])
        attack = self.adversary.attack
        #: The attack keeps state across rounds (mimic): server 0 holds it between rounds.
        self.attack_keeps_state = (attack is not None and not self.adversary.dimensional
                                   and callable(getattr(attack, "state_dict", None)))
        self.servers = range(self.cfg.servers)
        self.shards = setup.server.shards
        self.timeout = opts.timedelta("idle")
        self.plan = FaultPlan("worker", index)
        self._pushed: list[Message | None] = [None] * self.cfg.servers
        self._channels: list[socket.socket] = []  # to each server (connect)

    def warm_up(self) -> None:
        """Compute one vector before joining (first calls compile and allocate), so that the
        round deadline measures steady-state work."""
        theta = self.s.flat.initial()
        self.workers.vectors(theta, 0, self.step.lr_at(0), [self.index])

    def run(self) -> int:
        """Work until a server says stop (0); a lost server raises ``RuntimeError``."""
        while (job := self._next_round()) is not None:
            t, theta = job
            self._round(t, theta.to(self.device))
        return 0

    def _round(self, t: int, theta: Tensor) -> None:
        tic = time.perf_counter()
        draw = self.adversary.draw(t)
        byz = draw.byzantine
        label_map = self.adversary.label_map()
        flip = byz if draw.attacked and label_map is not None else None
        vectors = self.workers.vectors(theta, t, self.step.lr_at(t), [self.index], flip=flip,
                                       label_map=label_map)
        if self.momentum is not None:  # it sends its momentum: the honest row of the round
            self.momentum.update([self.index], vectors)
        vector = vectors[0]
        micros = int(1e6 * (time.perf_counter() - tic))
        garbage = self.plan.before_send(t)
        for server, (a, b) in zip(self.servers, self.shards, strict=True):
            msg = Message(Kind.VEC, t, [vector[a:b]], extra=micros)
            self._send(garble(garbage, msg) if garbage else msg, server)
        if draw.attacked and not self.adversary.dimensional and self.index in byz.tolist():
            self._attack(t, theta, draw)

    # -- the attack --------------------------------------------------------------------------

    def _attack(self, t: int, theta: Tensor, draw: Draw) -> None:
        knows = [self._know(t, server) for server in self.servers]
        listed = [k is not None and self.index in _own(k) for k in knows]
        if any(k is None for k in knows):
            self._abstain(t, listed, "a server sent no knowledge this round")
            return
        # rows every server received (they agree unless a fault hit only some servers)
        own = [w for w in _own(knows[0]) if all(w in _own(k) for k in knows)]
        seen = [w for w in _seen(knows[0]) if all(w in _seen(k) for k in knows)]
        if self.index not in own:
            self._abstain(t, listed, "its vector did not reach every server")
            return
        if self.attack_keeps_state and len(knows[0].parts) > 2:
            # the colluding attack's state after its last round (server 0 keeps it)
            self.adversary.attack.load_state_dict(unpack(knows[0].parts[2]))
        own_rows = torch.cat([_rows(k, own) for k in knows], dim=1).to(self.device)
        honest = torch.cat([_rows(k, seen) for k in knows], dim=1).to(self.device) \
            if seen else None
        n = self.cfg.workers if honest is None else len(own) + len(seen)
        try:
            rows = self.adversary.forge(draw, t, theta, self.step.lr_at(t), self.s.server.rule,
                                        honest=honest, own=own_rows,
                                        f=int(own_rows.shape[0]), n=n,
                                        honest_ids=torch.tensor(seen, dtype=torch.long)
                                        if seen else None)
        except ValueError as e:
            self._abstain(t, listed, f"the attack failed: {e}")
            return
        mine = rows[own.index(self.index)]
        for server, (a, b) in zip(self.servers, self.shards, strict=True):
            parts = [mine[a:b]]
            if server == 0 and self.attack_keeps_state:  # the attack's state, for server 0
                parts.append(pack(self.adversary.attack.state_dict()))
            self._send(Message(Kind.BYZ, t, parts), server)

    def _know(self, t: int, server: int) -> Message | None:
        """Server ``server``'s KNOW of round t (None if it moved on without one)."""
        while True:
            msg = self._take(server)
            if msg.kind == Kind.KNOW and msg.round == t:
                return msg
            if msg.kind in (Kind.ROUND, Kind.STOP) or msg.round > t:
                self._pushed[server] = msg
                return None

    def _abstain(self, t: int, listed: list[bool], why: str) -> None:
        log.warning("round %d: Byzantine worker %d abstains: %s", t, self.index, why)
        for server in self.servers:  # every message of a worker has one part
            if listed[server]:
                self._send(Message(Kind.BYZ, t, [torch.zeros(1)], aux=ABSTAIN), server)

    # -- messages ----------------------------------------------------------------------------

    def _next_round(self) -> tuple[int, Tensor] | None:
        """The newest round every server has sent, and theta joined from its shards; None
        when a server says stop."""
        got: list[Message | None] = [None] * self.cfg.servers
        target = -1
        while True:
            for server in self.servers:
                while (m := got[server]) is None or m.round < target:
                    msg = self._take(server)
                    if msg.kind == Kind.STOP:
                        return None
                    if msg.kind == Kind.ROUND:
                        got[server] = msg
                        if len(msg.parts) > 1 and self.momentum is not None:
                            self._load_momentum(server, msg.parts[1])
                target = max(target, got[server].round)  # type: ignore[union-attr]
            if all(m is not None and m.round == target for m in got):
                shards = [m.parts[0].reshape(-1) for m in got]  # type: ignore[union-attr]
                return target, shards[0] if len(shards) == 1 else torch.cat(shards)

    def _load_momentum(self, server: int, part: Tensor) -> None:
        """A resumed run: server ``server``'s shard of this worker's momentum buffer, from
        the checkpoint."""
        assert self.momentum is not None
        a, b = self.shards[server]
        if self.momentum.buffers is None:
            self.momentum.buffers = torch.zeros(1, self.s.flat.d, device=self.device)
        self.momentum.buffers[0, a:b] = part.reshape(-1)

    def connect(self, store: dist.Store) -> None:
        """Open this worker's connection to every server (:mod:`.wire`; the store says where
        they listen); :class:`~.wire.ChannelError` if a server refuses it."""
        timeout = self.timeout.total_seconds()
        self._channels = [wire.connect(*rendezvous.lookup(store, server), self.index,
                                       wire.secret(), timeout) for server in self.servers]

    def _take(self, server: int) -> Message:
        msg = self._pushed[server]
        if msg is not None:
            self._pushed[server] = None
            return msg
        return wire.read(self._channels[server])  # a server is trusted: no size limit

    def _send(self, msg: Message | bytes, server: int) -> None:
        """Send ``msg`` to ``server``; raw bytes only from fault injection."""
        if isinstance(msg, bytes):
            wire.write_raw(self._channels[server], msg)
        else:
            wire.write(self._channels[server], msg)


def _own(know: Message) -> list[int]:
    return know.parts[0].reshape(-1)[: know.aux].tolist()


def _seen(know: Message) -> list[int]:
    return know.parts[0].reshape(-1)[know.aux:].tolist()


def _rows(know: Message, workers: list[int]) -> Tensor:
    """The rows of ``workers`` in a KNOW message (its shard of their vectors)."""
    order = know.parts[0].reshape(-1).tolist()
    return know.parts[1][[order.index(w) for w in workers]]
