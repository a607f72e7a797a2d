"""One process of a distributed run; its role follows from its rank (``RANK``).

torchrun (or ``byzsgd run --backend distributed``) starts S + n copies of::

    python -m byzsgd.distributed.node --config exp.toml --out runs/x [config flags]

ranks 0..S-1 become the parameter servers (0 the lead, which writes the results), ranks
S..S+n-1 the workers. The rendezvous (:mod:`.rendezvous`) reads torch.distributed's
``env://`` variables: ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE``, which
torchrun sets (WORLD_SIZE must be S + n).

Under torchrun a worker runs as the child of a small supervisor process that exits 0 however
its child ends: torchrun tears down every local process when one of them fails, and a dead
worker must not stop a Byzantine-tolerant run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byzsgd.config import ExperimentConfig

from byzsgd.distributed.settings import THREADS, add_timeout_flags

log = logging.getLogger("byzsgd.distributed")
SUPERVISED = "BYZSGD_SUPERVISED"


def build_parser() -> argparse.ArgumentParser:
    from byzsgd.flags import add_config_flags, out_dir

    parser = argparse.ArgumentParser(prog="python -m byzsgd.distributed.node",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config file (flags override it)")
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=out_dir, default="runs/run",
                        help="results directory (server 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over a run that --out already holds")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--supervise", action=argparse.BooleanOptionalAction, default=None,
                        help="run a worker under a supervisor that exits 0 (default: under "
                             "torchrun only)")
    add_timeout_flags(parser.add_argument_group("distributed time limits"))
    add_config_flags(parser)
    return parser


def role(rank: int, servers: int, workers: int) -> tuple[str, int]:
    """``("server", s)`` for ranks 0..S-1, ``("worker", i)`` for ranks S..S+n-1."""
    if not 0 <= rank < servers + workers:
        raise ValueError(f"rank {rank} outside the world of {servers} server(s) + "
                         f"{workers} worker(s)")
    return ("server", rank) if rank < servers else ("worker", rank - servers)


def main(argv: list[str] | None = None) -> int:
    """Run this process's role; its exit code (the process ends here unless supervising)."""
    from byzsgd.tuning import tune_process

    tune_process()  # first, before anything loads torch
    from byzsgd.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:  # no validation yet: a supervisor must not pay for importing torch
        config = _config(args)
        servers, workers = config.servers, config.workers
        kind, index = role(rank, servers, workers)
        if world != servers + workers:
            raise ConfigError(f"WORLD_SIZE={world}, but the config has {servers} server(s) + "
                              f"{workers} worker(s) = {servers + workers} processes")
    except (ConfigError, ValueError) as e:
        print(f"byzsgd node: {e}", file=sys.stderr)
        return 2
    supervise = args.supervise if args.supervise is not None else \
        "TORCHELASTIC_RUN_ID" in os.environ
    if kind == "worker" and supervise and not os.environ.get(SUPERVISED):
        return _supervise(argv, index)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        stream=sys.stderr,
                        format=f"%(asctime)s [{kind} {index}] %(levelname)s %(message)s")
    from byzsgd.engine.recorder import RunLocked
    from byzsgd.results import CheckpointError

    code = 1
    try:
        code = _run(args, config.validate(), kind, index, rank, world)
    except ConfigError as e:
        print(f"byzsgd node: invalid configuration: {e}", file=sys.stderr)
        code = 2
    except (RunLocked, CheckpointError) as e:
        print(f"byzsgd node: {e}", file=sys.stderr)
        code = 2
    except Exception:
        log.exception("%s %d failed", kind, index)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    # gloo threads may still wait on peers that hang: leave without joining them
    os._exit(code)


def _config(args: argparse.Namespace) -> ExperimentConfig:
    from byzsgd.config import ExperimentConfig
    from byzsgd.flags import resolve_config

    if args.config_json:
        return ExperimentConfig.from_dict(json.loads(args.config_json))
    return resolve_config(args)


def _run(args: argparse.Namespace, config: ExperimentConfig, kind: str, index: int, rank: int,
         world: int) -> int:
    import torch

    from byzsgd.distributed import rendezvous
    from byzsgd.distributed.placement import this_process_device
    from byzsgd.distributed.protocol import Options
    from byzsgd.engine.setup import build

    if os.environ.get(THREADS):
        torch.set_num_threads(int(os.environ[THREADS]))
    opts = Options(deadline=args.deadline, connect=args.connect_timeout,
                   idle=args.idle_timeout)
    from byzsgd.distributed.server import LeadServer, lead_recorder, serve
    from byzsgd.distributed.worker import Worker

    # set up before joining: every process is ready when the group is up; on this process's
    # device (cuda:(local rank mod GPUs) for "cuda"/"auto", see placement), while the config
    # the run records keeps the device as given
    device = this_process_device(config.device, rank)
    setup = build(dataclasses.replace(config, device=device))
    setup.config = config
    log.info("%s %d computes on %s", kind, index, device)
    worker = Worker(setup, index, opts) if kind == "worker" else None
    if worker is not None:
        worker.warm_up()
    recorder = None
    if kind == "server" and index == 0:  # the lock and the overwrite rule, before joining
        recorder = lead_recorder(setup, Path(args.out))
        recorder.acquire(resume=args.resume, overwrite=args.overwrite)
    store = rendezvous.open_store(rank, opts.timedelta("connect"))
    if worker is not None:
        try:
            worker.connect(store)
            log.info("joined as rank %d of %d (d=%d)", rank, world, setup.flat.d)
            return worker.run()
        except RuntimeError as e:
            log.error("lost contact with a server: %s", str(e).splitlines()[0])
            return 3
    rendezvous.join_servers(store, index, config.servers, opts.timedelta("connect"))
    log.info("joined as rank %d of %d (d=%d)", rank, world, setup.flat.d)
    if recorder is None:
        return serve(setup, index, opts)
    from byzsgd.progress import Progress

    progress = None if args.quiet else Progress(config.rounds, "distributed ")
    # a run that diverged ends normally, with status "diverged" in summary.json
    LeadServer(setup, Path(args.out), opts, recorder).run(
        resume=args.resume, overwrite=args.overwrite, progress=progress)
    return 0


def _supervise(argv: list[str], index: int) -> int:
    """Run this worker as a child process; exit 0 whatever becomes of it."""
    env = {**os.environ, SUPERVISED: "1"}
    child = subprocess.Popen([sys.executable, "-m", "byzsgd.distributed.node", *argv], env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    if code != 0:
        print(f"byzsgd node: worker {index} exited with code {code}; the servers carry on "
              f"without it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
