"""How the processes of a run find each other: the rendezvous store, the servers' gloo group,
and where each server's worker channel (:mod:`.wire`) listens.

The store is a :class:`torch.distributed.TCPStore` at ``MASTER_ADDR:MASTER_PORT``. torch's
own ``env://`` rendezvous makes rank 0 listen on every interface, whatever ``MASTER_ADDR``
says; here rank 0 binds the listening socket to ``MASTER_ADDR`` itself and hands it to the
store (``master_listen_fd``), so ``--master-addr 127.0.0.1`` keeps the store on loopback.
Under torchrun, whose agent hosts the store (``TORCHELASTIC_USE_AGENT_STORE``), every
process is a client of torchrun's store.

Only the S servers form a gloo process group (:func:`join_servers`); the workers are
clients of the store, which tells them where each server listens (:func:`publish`,
:func:`lookup`), and talk to the servers over :mod:`.wire` only.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

import torch.distributed as dist

_KEY = "byzsgd/server/{}"
_store: dist.Store | None = None


def master() -> tuple[str, int]:
    """``MASTER_ADDR`` and ``MASTER_PORT``, as torch's ``env://`` reads them."""
    return os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT",
                                                                           "29500"))


def listen_host() -> str:
    """Where a server listens for its workers: ``$BYZSGD_HOST`` if set (on several machines,
    when ``MASTER_ADDR`` is not an address the workers reach the servers at), else
    ``MASTER_ADDR``."""
    return os.environ.get("BYZSGD_HOST") or master()[0]


def open_store(rank: int, timeout: dt.timedelta) -> dist.Store:
    """This process's handle on the run's store: the store itself on rank 0 (bound to
    ``MASTER_ADDR`` only), a client elsewhere and under torchrun's agent store."""
    global _store
    host, port = master()
    if rank != 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = dist.TCPStore(host, port, None, False, timeout)
    else:
        sock = socket.create_server((host, port), backlog=1024)
        # the store owns the descriptor from now on
        store = dist.TCPStore(host, port, None, True, timeout, wait_for_workers=False,
                              master_listen_fd=sock.detach())
    _store = dist.PrefixStore("byzsgd/", store)
    return _store


def current() -> dist.Store:
    """The store :func:`open_store` opened in this process."""
    if _store is None:
        raise RuntimeError("no rendezvous store in this process: call open_store first")
    return _store


def join_servers(store: dist.Store, index: int, servers: int, timeout: dt.timedelta) -> None:
    """Server ``index`` joins the gloo group of the S servers (ranks 0..S-1)."""
    dist.init_process_group("gloo", store=dist.PrefixStore("servers/", store), rank=index,
                            world_size=servers, timeout=timeout)


def publish(store: dist.Store, server: int, address: tuple[str, int]) -> None:
    """Say where server ``server``'s worker channel listens. An unspecified address (the
    listener fell back to every interface) is published as this machine's name."""
    host, port = address
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    store.set(_KEY.format(server), f"{host} {port}")


def lookup(store: dist.Store, server: int) -> tuple[str, int]:
    """Where server ``server``'s worker channel listens (waits for it, up to the store's
    timeout)."""
    host, port = store.get(_KEY.format(server)).decode().rsplit(" ", 1)
    return host, int(port)
