"""The machine a benchmark ran on, printed at the top of every benchmark.

Numbers move 2.5x between machines of the same kind (ANCHORS.md), so every benchmark states
the CPU model, its vector width (avx2 / avx512f / neon), cores, the threads torch uses, the
torch and numba versions, the load average and, where the library reports one, the kernel
variant it chose (``byzsgd.kernels.describe()``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass

#: Vector-width flags worth naming (x86: /proc/cpuinfo "flags"; Arm: "Features").
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "neon",
                "asimd", "sve", "sve2")


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def vector_flags(flags: set[str] | None = None) -> list[str]:
    """The vector-width flags this CPU has, in :data:`VECTOR_FLAGS` order; on Arm (aarch64)
    ``neon`` is implied by ``asimd``."""
    flags = _cpuinfo_flags() | set(_lscpu().get("Flags", "").split()) if flags is None \
        else set(flags)
    if "asimd" in flags or platform.machine() in ("aarch64", "arm64"):
        flags.add("neon")
    return [flag for flag in VECTOR_FLAGS if flag in flags]


def load() -> str:
    """``uptime``'s load averages (1, 5, 15 minutes)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def high_load(cores: int | None = None) -> bool:
    """Whether the 1-minute load average exceeds the number of cores (numbers taken then are
    marked as such)."""
    return os.getloadavg()[0] > (cores or os.cpu_count() or 1)


def kernel_variant() -> str:
    """The library's own account of the kernel variant it chose, when it has one."""
    try:
        from byzsgd import kernels
    except ImportError:
        return "byzsgd.kernels not importable"
    describe = getattr(kernels, "describe", None)
    if describe is None:
        return "not reported (byzsgd.kernels.describe() absent in this version)"
    try:
        return str(describe())
    except Exception as error:  # the header must print whatever happens
        return f"byzsgd.kernels.describe() failed: {error!r}"


def describe(threads: int | None = None) -> list[str]:
    """The header lines: machine, vector flags, cores, threads, versions, load, kernels."""
    cpu = _lscpu()
    model = cpu.get("Model name") or platform.processor() or platform.machine()
    family = f" (family {cpu['CPU family']} model {cpu['Model']})" \
        if "CPU family" in cpu and "Model" in cpu else ""
    lines = [f"machine: {model}{family}, {platform.machine()}, {os.cpu_count()} cores "
             f"({cpu.get('Thread(s) per core', '?')} thread(s) per core)",
             "vector flags: " + (" ".join(vector_flags()) or "none found")
             + ("" if "avx512f" in vector_flags() or "neon" in vector_flags()
                else " (no avx512f)")]
    versions = [f"python {platform.python_version()}"]
    try:
        import torch

        versions.append(f"torch {torch.__version__}")
        threads = threads if threads is not None else torch.get_num_threads()
    except ImportError:
        pass
    try:
        import numba

        versions.append(f"numba {numba.__version__}")
    except ImportError:
        versions.append("numba absent")
    lines.append(", ".join(versions) + f"; threads used: {threads}")
    cores = os.cpu_count() or 1
    lines.append(f"load average (uptime): {load()} on {cores} cores"
                 + (" -- HIGH LOAD: numbers below are marked as such" if high_load(cores)
                    else ""))
    lines.append(f"kernel variant: {kernel_variant()}")
    return lines


def print_header(threads: int | None = None) -> list[str]:
    """Print :func:`describe`'s lines; returns them."""
    lines = describe(threads)
    for line in lines:
        print(line)
    return lines


@dataclass
class Run:
    """A benchmark run's record for its report: the machine header, the load average before
    and (after :meth:`finish`) after, and the run time."""

    header: list[str]
    load_before: str
    began: float
    load_after: str = ""
    took: str = ""

    def finish(self) -> None:
        """Record the load after and the run time, and print them."""
        self.load_after = load()
        self.took = f"{(time.perf_counter() - self.began) / 60:.1f} min"
        print(f"load average after: {self.load_after}; run time {self.took}")

    @property
    def loads(self) -> tuple[str, str]:
        return self.load_before, self.load_after


def begin(threads: int | None = None) -> Run:
    """Start a benchmark run: the clock, the machine header (printed), the load before."""
    began = time.perf_counter()
    header = print_header(threads)
    return Run(header, load(), began)
