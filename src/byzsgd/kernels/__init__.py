"""Which implementation of the rules' kernels runs: compiled (numba, CPU) or pure torch.

Every kernel behind the rules (the centered Gram matrix, the per-coordinate order statistics,
the max-norm distances, the row helpers, bucketing's row mixing, the attacks' moments) has two
implementations with the same definition and the same hostile-input guarantees: the compiled
one (numba, CPU float32/float64 only, 3-7x faster there) and a pure-torch one
(:mod:`byzsgd.kernels.torch_impl`) that runs on any device and dtype torch supports. The
choice follows torch.optim's ``foreach``/``fused`` model:

* ``"auto"`` (default): compiled for CPU float32/float64 tensors, torch otherwise (CUDA, other
  devices, other dtypes);
* ``"torch"``: always torch;
* ``"compiled"``: always compiled; a tensor it cannot take (not on the CPU, or not
  float32/float64) raises ``ValueError``.

Every rule takes ``impl=`` (:data:`IMPL_CONSTRAINT`); the registry runs the rule inside
:func:`use`, and each kernel asks :func:`use_torch` for its input. Nothing moves data between
devices: each implementation returns its result on its input's device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from byzsgd.constraints import Options

__all__ = ["GRAM_CHUNK_BYTES", "IMPLS", "IMPL_CONSTRAINT", "compiled_ok", "current",
           "describe", "gram_partial_terms", "note_variant", "use", "use_torch", "vector_isa"]

#: The accepted values of a rule's ``impl`` parameter.
IMPLS = ("auto", "torch", "compiled")
#: The declared constraint of a rule's ``impl`` parameter.
IMPL_CONSTRAINT = [Options(IMPLS)]

#: Bytes of each row the compiled Gram kernel sums in the input's precision before adding the
#: partial sums into float64 (``byzsgd.aggregators._gram``; n rows x 4 KiB sit in L2).
GRAM_CHUNK_BYTES = 4096

_IMPL: ContextVar[str] = ContextVar("byzsgd_kernel_impl", default="auto")


def current() -> str:
    """The implementation the kernels are asked for in this context (``"auto"`` outside
    :func:`use`)."""
    return _IMPL.get()


@contextmanager
def use(impl: str) -> Iterator[None]:
    """Run the kernels called inside the block with ``impl`` (one of :data:`IMPLS`)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    token = _IMPL.set(impl)
    try:
        yield
    finally:
        _IMPL.reset(token)


def compiled_ok(x: torch.Tensor) -> bool:
    """Whether the compiled kernels can read ``x``: a CPU float32/float64 tensor."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def use_torch(x: torch.Tensor, kernel: str = "kernel") -> bool:
    """Whether ``kernel`` runs its torch implementation on ``x`` in this context; raises
    ``ValueError`` when ``impl="compiled"`` was asked for a tensor it cannot read."""
    impl = _IMPL.get()
    if impl == "torch":
        return True
    ok = compiled_ok(x)
    if impl == "compiled" and not ok:
        raise ValueError(f"{kernel}: impl='compiled' needs a CPU float32/float64 tensor, got "
                         f"{x.dtype} on {x.device} (use impl='torch' or 'auto')")
    return not ok


def gram_partial_terms(dtype: torch.dtype) -> int:
    """How many products of two rows the centered Gram kernel adds in ``dtype`` (float32 or
    float64) before the float64 accumulation: a sum of that many products of magnitude
    ``t`` overflows ``dtype`` when ``t * terms > finfo(dtype).max``. The leeway attacks size
    their step so the rule's Gram matrix stays finite. The torch implementation accumulates
    in float64 and saturates to ``dtype``'s range, which is no tighter."""
    return GRAM_CHUNK_BYTES // torch.empty((), dtype=dtype).element_size()


_VARIANTS: dict[str, str] = {}


def note_variant(kernel: str, variant: str) -> None:
    """Record which variant of a compiled kernel this process runs (called by the kernel's
    module at import; :func:`describe` lists them)."""
    _VARIANTS[kernel] = variant


def vector_isa() -> tuple[str, int, int]:
    """The widest SIMD instruction set the compiled kernels target on this CPU (as LLVM, and
    so numba, sees it): (name, vector width in bits, vector registers). ("unknown", 0, 0) when
    the host's features cannot be read."""
    try:
        from llvmlite import binding

        features = {f[1:] for f in binding.get_host_cpu_features().flatten().split(",")
                    if f.startswith("+")}
    except Exception:  # a description must not fail
        return "unknown", 0, 0
    if "avx512f" in features:
        return "avx512f", 512, 32
    if "avx2" in features:
        return "avx2", 256, 16
    if "avx" in features:
        return "avx", 256, 16
    if "sve" in features:
        return "sve", 128, 32  # at least 128 bits; numba's loops use fixed-width NEON
    if "neon" in features or "fp-armv8" in features:
        return "neon", 128, 32
    if "sse2" in features:
        return "sse2", 128, 16
    return "scalar", 0, 0


def describe() -> str:
    """One line for benchmarks and bug reports: the CPU as LLVM names it, its vector
    instruction set and width, and the variant of each compiled kernel noted so far."""
    try:
        from llvmlite import binding

        cpu = binding.get_host_cpu_name()
    except Exception:  # idem
        cpu = "unknown"
    name, bits, regs = vector_isa()
    parts = [f"cpu {cpu}, {name} ({bits}-bit vectors, {regs} registers)"]
    parts += [f"{kernel}: {variant}" for kernel, variant in sorted(_VARIANTS.items())]
    return "; ".join(parts)
