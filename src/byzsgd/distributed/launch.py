"""Starting a distributed run: ``byzsgd run --backend distributed``.

* ``--launcher local`` (default on one machine): this process spawns the S + n node
  processes itself on ``--master-addr`` (127.0.0.1), sets torch.distributed's ``env://``
  variables, shares the cores among them, sends server 0's output to the terminal and the
  others' to ``<out>/logs/rank-<r>.log``, and waits for the servers. A worker that dies is
  reported and the run carries on; a server that dies ends the run (``--resume`` continues
  it from the last checkpoint). The processes get a fresh shared secret (``BYZSGD_TOKEN``)
  for the workers' handshake, and with a loopback ``--master-addr`` gloo stays on loopback.
* ``--launcher torchrun`` (implied by ``--nnodes`` > 1 or ``--rdzv-endpoint``): this process
  becomes ``torchrun ... -m byzsgd.distributed.node ...`` with torchrun's usual rendezvous
  flags, one such command per machine (see docs/distributed.md).

Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.distributed.settings import THREADS, add_timeout_flags, port
from byzsgd.flags import nonnegative_int, positive_int

#: The shared secret's variable (:data:`byzsgd.distributed.wire.TOKEN_ENV`, which imports
#: torch).
TOKEN_ENV = "BYZSGD_TOKEN"

NODE = ["-m", "byzsgd.distributed.node"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and the options of a distributed run (for ``byzsgd run``)."""
    parser.add_argument("--backend", choices=("simulator", "distributed"), default="simulator",
                        help="simulator: one process (default); distributed: parameter "
                             "server(s) and workers as processes on torch.distributed (gloo)")
    group = parser.add_argument_group("distributed launch (--backend distributed)")
    group.add_argument("--launcher", choices=("local", "torchrun"), default=None,
                       help="local: spawn every process here (default on one machine); "
                            "torchrun: run torchrun with the rendezvous flags below")
    group.add_argument("--master-addr", default="127.0.0.1",
                       help="address of server 0's rendezvous store (default 127.0.0.1)")
    group.add_argument("--master-port", type=port, default=None,
                       help="its port (default: a free port; 29500 under torchrun)")
    group.add_argument("--nnodes", type=positive_int, default=1,
                       help="torchrun: number of machines")
    group.add_argument("--node-rank", type=nonnegative_int, default=0,
                       help="torchrun: this machine's rank (machine 0 hosts the servers)")
    group.add_argument("--nproc-per-node", type=positive_int, default=None,
                       help="torchrun: processes on this machine (default: all S + n)")
    group.add_argument("--rdzv-backend", default=None, help="torchrun: rendezvous backend")
    group.add_argument("--rdzv-endpoint", default=None, help="torchrun: rendezvous endpoint")
    group.add_argument("--rdzv-id", default=None, help="torchrun: rendezvous (job) id")
    add_timeout_flags(group)


def node_args(args: argparse.Namespace) -> list[str]:
    """The node flags that follow from ``byzsgd run`` flags (time limits, resume, overwrite,
    quiet)."""
    out = ["--deadline", str(args.deadline), "--connect-timeout", str(args.connect_timeout),
           "--idle-timeout", str(args.idle_timeout)]
    if getattr(args, "resume", False):
        out.append("--resume")
    if getattr(args, "overwrite", False):
        out.append("--overwrite")
    if getattr(args, "quiet", False):
        out.append("--quiet")
    return out


def run_from_args(config: ExperimentConfig, args: argparse.Namespace) -> int:
    """``byzsgd run --backend distributed``: the exit code of the run."""
    launcher = args.launcher or ("torchrun" if args.nnodes > 1 or args.rdzv_endpoint
                                 else "local")
    if launcher == "local":
        if args.nnodes > 1:
            raise ConfigError("--nnodes > 1 needs --launcher torchrun")
        from byzsgd.engine.recorder import check_out

        # the simulator's rule, before any process starts (the lead server checks again)
        check_out(Path(args.out), resume=getattr(args, "resume", False),
                  overwrite=getattr(args, "overwrite", False))
        code = launch_local(config, args.out, node_args(args), master_addr=args.master_addr,
                            master_port=args.master_port)
        if code == 0 and not args.quiet:
            _report(Path(args.out))
        return code
    cmd = torchrun_command(config, args.out, node_args(args), nnodes=args.nnodes,
                           node_rank=args.node_rank, nproc_per_node=args.nproc_per_node,
                           master_addr=args.master_addr, master_port=args.master_port,
                           rdzv_backend=args.rdzv_backend, rdzv_endpoint=args.rdzv_endpoint,
                           rdzv_id=args.rdzv_id)
    env = dict(os.environ)
    if not env.get(TOKEN_ENV):
        if args.nnodes == 1 and not args.rdzv_endpoint:
            env[TOKEN_ENV] = secrets.token_hex(16)
        else:
            print(f"byzsgd: ${TOKEN_ENV} is not set: any process that reaches the servers can "
                  f"join as a worker (set the same secret on every machine; see "
                  f"docs/distributed.md)", file=sys.stderr)
    return subprocess.call(cmd, env=env)


def _report(out: Path) -> None:
    from byzsgd.results import read_json

    summary = read_json(out / "summary.json")
    faults = summary.get("faults", {})
    print(f"final test accuracy {100 * summary['final_test_accuracy']:.2f}% "
          f"(best {100 * summary['best_test_accuracy']:.2f}%), "
          f"{summary['rounds_per_s'] or 0:.1f} rounds/s, faults: "
          f"{faults.get('absent', 0)} absent, {faults.get('malformed', 0)} malformed, "
          f"{faults.get('nonfinite', 0)} non-finite; results in {out}/")


def local_env(env: dict[str, str], master_addr: str) -> dict[str, str]:
    """``env`` for the processes of a run on this machine: a fresh shared secret for the
    workers' handshake unless ``$BYZSGD_TOKEN`` holds one, and, when ``master_addr`` is a
    loopback address, gloo kept on the loopback interface (unless ``$GLOO_SOCKET_IFNAME``
    says otherwise)."""
    out = dict(env)
    if not out.get(TOKEN_ENV):
        out[TOKEN_ENV] = secrets.token_hex(16)
    if is_loopback(master_addr) and "GLOO_SOCKET_IFNAME" not in out:
        names = {name for _, name in socket.if_nameindex()}
        if "lo" in names:
            out["GLOO_SOCKET_IFNAME"] = "lo"
    return out


def is_loopback(addr: str) -> bool:
    """Whether ``addr`` (an address or a host name) names this machine's loopback."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(addr)).is_loopback
    except (OSError, ValueError):
        return False


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def launch_local(config: ExperimentConfig, out: str | Path, args: list[str], *,
                 master_addr: str = "127.0.0.1", master_port: int | None = None,
                 entry: list[str] | None = None, env: dict[str, str] | None = None,
                 grace: float = 10.0) -> int:
    """Run S + n node processes on this machine and wait for the servers; the exit code of
    the run (0, or the first failed server's). ``entry`` replaces the node command
    (``python -m byzsgd.distributed.node``), ``env`` adds environment variables."""
    config = config.validate()
    servers, world = config.servers, config.servers + config.workers
    out = Path(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    base = {**local_env({**os.environ, **(env or {})}, master_addr), "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port or free_port(master_addr)),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
    argv = [*(entry or [sys.executable, *NODE]), "--config-json", json.dumps(config.to_dict()),
            "--out", str(out), *args]
    procs: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        try:
            for rank in range(world):
                threads = str(max(1, cpus // (servers if rank < servers else config.workers)))
                penv = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), THREADS: threads,
                        "OMP_NUM_THREADS": threads}
                sink: IO[Any] | None = None
                if rank > 0:
                    sink = stack.enter_context(open(out / "logs" / f"rank-{rank}.log", "w"))
                procs.append(subprocess.Popen(argv, env=penv, stdout=sink,
                                              stderr=subprocess.STDOUT if sink else None))
            return _wait(procs, servers, grace)
        finally:
            _end(procs)


def _wait(procs: list[subprocess.Popen[bytes]], servers: int, grace: float) -> int:
    reported: set[int] = set()
    while True:
        codes = [p.poll() for p in procs]
        for rank in range(servers, len(procs)):
            if codes[rank] not in (None, 0) and rank not in reported:
                reported.add(rank)
                print(f"byzsgd: worker {rank - servers} (rank {rank}) exited with code "
                      f"{codes[rank]}; the servers carry on without it", file=sys.stderr)
        for rank in range(servers):
            if codes[rank] not in (None, 0):
                print(f"byzsgd: server {rank} exited with code {codes[rank]}; the run stops "
                      f"(--resume continues it from its last checkpoint)", file=sys.stderr)
                return codes[rank] if codes[rank] > 0 else 1  # type: ignore[operator]
        if all(code is not None for code in codes[:servers]):
            break
        time.sleep(0.05)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(p.poll() is None for p in procs[servers:]):
        time.sleep(0.05)
    return 0


def _end(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate what is still running (a hung worker), then kill what ignores it."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    end = time.monotonic() + 3.0
    for p in alive:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def torchrun_command(config: ExperimentConfig, out: str | Path, args: list[str], *,
                     nnodes: int = 1, node_rank: int = 0, nproc_per_node: int | None = None,
                     master_addr: str = "127.0.0.1", master_port: int | None = None,
                     rdzv_backend: str | None = None, rdzv_endpoint: str | None = None,
                     rdzv_id: str | None = None) -> list[str]:
    """The torchrun command line of this machine's share of the run."""
    world = config.validate().servers + config.workers
    if nproc_per_node is None:
        if nnodes > 1:
            raise ConfigError("--nnodes > 1 needs --nproc-per-node (this machine's share of "
                              f"the {world} processes)")
        nproc_per_node = world
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
           f"--nproc-per-node={nproc_per_node}", "--max-restarts=0"]
    if rdzv_endpoint:
        cmd += [f"--rdzv-backend={rdzv_backend or 'c10d'}", f"--rdzv-endpoint={rdzv_endpoint}",
                f"--rdzv-id={rdzv_id or 'byzsgd'}"]
    elif nnodes == 1 and master_port is None:
        cmd += ["--standalone"]
    else:
        cmd += [f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                f"--master-port={master_port or 29500}"]
    return [*cmd, *NODE, "--config-json", json.dumps(config.to_dict()), "--out", str(out),
            *args]
