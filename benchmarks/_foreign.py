"""The other libraries (ByzFL, byzpy), measured in the same run as byzsgd, or quoted.

ByzFL imports torchvision, which does not install beside this project's torch, so it usually
lives in another interpreter (with a torchvision stub on its PYTHONPATH). The interpreter is,
in order: ``--byzfl-python PATH``; this interpreter, when ``import byzfl`` works here; the
environment variable ``BYZSGD_BYZFL_PYTHON``. ``--byzfl-pythonpath`` (or
``BYZSGD_BYZFL_PYTHONPATH``) is prepended to its PYTHONPATH. byzpy is timed in the same
interpreter when it imports there.

:class:`Foreign` starts ``_foreign_worker.py`` in that interpreter on the same input (the
matrix saved as .npy), and the benchmarks alternate call by call: ours, ByzFL's, byzpy's, so
the three see the same load; medians of each. Where neither library is available they print
:func:`quote_line` -- the anchors measured once on another machine (ANCHORS.md), with that
machine named -- and divide by nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

WORKER = Path(__file__).resolve().with_name("_foreign_worker.py")
ENV_PYTHON = "BYZSGD_BYZFL_PYTHON"
ENV_PATH = "BYZSGD_BYZFL_PYTHONPATH"

#: Where the anchors were measured (/work/shared/ANCHORS.md).
ANCHOR_MACHINE_SURVEY = ("the 2-core machine of the 2026-11 survey (idle, torch 2.13.0 CPU, "
                         "2 threads; one read pass of the (51, 1e6) input took 7 ms)")
ANCHOR_MACHINE_ZEN3 = ("AMD EPYC Zen 3 (family 25 model 1; avx2, no avx512f), 2 threads, load "
                       "1.5-2, 2026-11-29 (one read pass took 26.5 ms)")
#: ms per call at n = 51, d = 1e6, f = 12: library -> rule -> (ms, machine).
ANCHORS_MS = {
    "ByzFL 0.0.11": {"mean": 8.6, "median": 637, "trimmed-mean": 178, "krum": 297,
                     "multi-krum": 363, "geomed": 526, "meamed": 2047},
    "byzpy 0.1.4": {"median": 476, "trimmed-mean": 827, "krum": 141, "multi-krum": 189,
                    "geomed": 1456},
}
ANCHORS_ZEN3_MS = {"ByzFL 0.0.11": {"trimmed-mean": 370, "meamed": 3808},
                   "byzpy 0.1.4": {"median": 967, "krum": 341}}
#: Training rounds per second (MNIST MLP, n = 51, f = 12, batch 83, ALIE z = 1.5).
ANCHORS_ROUNDS = {"survey": {"median": 9.7, "krum": 14.0}, "zen3": {"median": 3.81, "krum": 4.48}}


def quote_line(library: str, rules: list[str] | None = None) -> str:
    """The line printed instead of a measurement: the anchor numbers and their machines."""
    def fmt(table: dict[str, float]) -> str:
        return ", ".join(f"{rule} {ms:g} ms" for rule, ms in table.items()
                         if rules is None or rule in rules)

    name = library.split()[0]
    survey = fmt(ANCHORS_MS.get(library, {}))
    zen3 = fmt(ANCHORS_ZEN3_MS.get(library, {}))
    parts = [f"{survey} from {ANCHOR_MACHINE_SURVEY}"] if survey else []
    if zen3:
        parts.append(f"{zen3} from {ANCHOR_MACHINE_ZEN3}")
    quoted = "; ".join(parts) or "nothing for these operations"
    return (f"{name} not installed: quoting {quoted} (ANCHORS.md); not divided by: "
            "ratios only count when measured side by side")


def rounds_quote_line() -> str:
    survey, zen3 = ANCHORS_ROUNDS["survey"], ANCHORS_ROUNDS["zen3"]
    return ("ByzFL not installed: quoting ByzFL 0.0.11 rounds/s "
            f"median {survey['median']}, krum {survey['krum']} from {ANCHOR_MACHINE_SURVEY}; "
            f"median {zen3['median']}, krum {zen3['krum']} from {ANCHOR_MACHINE_ZEN3} "
            "(ANCHORS.md); not divided by")


def find_python(explicit: str | None) -> str | None:
    """The interpreter that runs the other libraries (module docstring), or None."""
    if explicit:
        return explicit if explicit.lower() != "none" else None
    if importlib.util.find_spec("byzfl") is not None:
        return sys.executable
    return os.environ.get(ENV_PYTHON) or None


def command(script: str, argv: list[str] | None, explicit: str | None) -> str:
    """The command line that reproduces this run, with the environment variables that chose
    the other libraries' interpreter when no ``--byzfl-python`` did."""
    args = " ".join(argv if argv is not None else sys.argv[1:])
    env = "" if explicit else " ".join(f"{key}={os.environ[key]}" for key in (ENV_PYTHON,
                                                                              ENV_PATH)
                                       if os.environ.get(key))
    return " ".join(part for part in (env, f"python benchmarks/{script}", args) if part)


def add_arguments(parser) -> None:
    parser.add_argument("--byzfl-python", default=None,
                        help="an interpreter where `import byzfl` (and byzpy) works; default: "
                        f"this one if it has byzfl, else ${ENV_PYTHON}; 'none' to skip")
    parser.add_argument("--byzfl-pythonpath", default=os.environ.get(ENV_PATH),
                        help=f"prepended to its PYTHONPATH (a torchvision stub; ${ENV_PATH})")


class Foreign:
    """The other libraries in their interpreter (``_foreign_worker.py``), one request at a
    time. ``info`` holds their versions (None where a library does not import)."""

    def __init__(self, python: str, pythonpath: str | None, threads: int) -> None:
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        self.dir = tempfile.TemporaryDirectory(prefix="byzsgd-bench-")
        self.proc = subprocess.Popen([python, str(WORKER), str(threads)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"{python} {WORKER.name} exited ({self.proc.returncode}) "
                               "before answering")
        self.info = json.loads(line)
        self.ops: set[str] = set()

    def request(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the other libraries' worker exited")
        return json.loads(line)

    def load(self, x, f: int) -> set[str]:
        """Hand over the matrix (saved as .npy); returns the operations offered."""
        path = Path(self.dir.name) / "x.npy"
        np.save(path, x.numpy() if hasattr(x, "numpy") else x)
        self.ops = set(self.request(cmd="load", path=str(path), f=f)["ops"])
        return self.ops

    def call_ms(self, op: str) -> float | None:
        return self.request(cmd="time", op=op).get("ms") if op in self.ops else None

    def has(self, library: str) -> bool:
        return bool(self.info.get(library))

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.dir.cleanup()


def start(python: str | None, pythonpath: str | None, threads: int) -> Foreign | None:
    """A worker, or None (with the reason printed) where none can run."""
    if python is None:
        return None
    try:
        foreign = Foreign(python, pythonpath, threads)
    except (OSError, RuntimeError, ValueError) as error:
        print(f"other libraries not timed ({python}): {error}")
        return None
    for problem in foreign.info.get("errors", []):
        print(f"  (import problem in {python}: {problem[:200]})")
    return foreign


def missing(foreign: Foreign | None) -> list[str]:
    """The libraries (named with the version the anchors were measured with) this run does not
    measure."""
    return [lib for lib, key in (("ByzFL 0.0.11", "byzfl"), ("byzpy 0.1.4", "byzpy"))
            if foreign is None or not foreign.has(key)]


def versions_line(foreign: Foreign | None) -> str:
    if foreign is None:
        return "other libraries: none measured in this run"
    info = foreign.info
    return (f"other libraries, measured side by side in {foreign.proc.args[0]}: "
            f"ByzFL {info['byzfl'] or 'not importable'}, byzpy {info['byzpy'] or 'not importable'}"
            f" (torch {info['torch']}, {info['threads']} threads)")


def interleave(ops: dict[str, Callable[[], object]], theirs: dict[str, list[str]],
               read: Callable[[], object], foreign: Foreign | None,
               repeats: int) -> dict[str, dict[str, float | None]]:
    """Median ms of each operation (``ours``), of one ``read`` pass timed just before it, and
    of each foreign operation named in ``theirs[name]``, called in turn ``repeats`` times
    after one warm-up call each (compilation, caches, their first calls)."""
    times: dict[str, dict[str, list[float]]] = {
        name: {key: [] for key in ["read", "ours", *theirs[name]]} for name in ops}
    for name, fn in ops.items():
        fn()
        for op in theirs[name]:
            foreign.call_ms(op)  # type: ignore[union-attr]
    for i in range(repeats):
        print(f"  round {i + 1} of {repeats} ...", file=sys.stderr, flush=True)
        for name, fn in ops.items():
            start = time.perf_counter()
            read()
            times[name]["read"].append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            fn()
            times[name]["ours"].append((time.perf_counter() - start) * 1e3)
            for op in theirs[name]:
                value = foreign.call_ms(op)  # type: ignore[union-attr]
                if value is not None:
                    times[name][op].append(value)
    return {name: {key: statistics.median(v) if v else None for key, v in columns.items()}
            for name, columns in times.items()}
