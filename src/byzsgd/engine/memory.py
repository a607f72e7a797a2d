"""The memory bound: a run whose round cannot fit on its device fails before training.

Before round 0, :func:`check` estimates what a round holds at once on the device
(:func:`round_needs`) and compares it with the device's free memory (:func:`free_bytes`):

* the received matrix, n x d values of the parameters' dtype;
* the per-worker gradients before they are copied into it, another n x d (not for the
  hand-written MLP backward, which writes the rows in place);
* the per-worker working set of the gradients: every activation of the model's forward pass
  for the workers computed at once (n x b examples under ``vmap`` and the hand-written MLP
  backward, b for the loop over workers) and its gradient in the backward pass, twice the
  activations (:func:`activations_per_example`, measured on one example by forward hooks).

The rule's own working memory (a sort of a copy of the matrix for the coordinate-wise rules)
is not counted: the estimate is a floor, and a run above it cannot fit. A run that does not
fit raises :class:`MemoryBoundError` with the numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from byzsgd.config import ConfigError


class MemoryBoundError(ConfigError):
    """A run whose round needs more memory than its device has free."""


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` now: ``torch.cuda.mem_get_info`` on CUDA; on the CPU (and
    MPS, which shares it) the kernel's ``MemAvailable`` from /proc/meminfo, else the free
    physical pages (``os.sysconf``)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def activations_per_example(module: nn.Module, example: Tensor) -> int:
    """Values of every layer's output in a forward pass of ``module`` on one ``example``
    (a batch of one), counted by forward hooks on its leaf modules; the module's mode and
    buffers are left as they were."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, Tensor):
            total += output.numel()

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    buffers = {k: b.clone() for k, b in module.named_buffers()}
    training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(example.unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
        module.train(training)
        for k, b in module.named_buffers():
            b.copy_(buffers[k])
    return total + example.numel()


@dataclass(frozen=True)
class RoundNeeds:
    """What one round holds on the device at once, in bytes (module docstring)."""

    n: int
    d: int
    itemsize: int
    received: int
    gradients: int
    working_set: int
    #: Examples whose activations are alive at once (n x b or b) and values per example.
    examples: int
    activations: int

    @property
    def total(self) -> int:
        return self.received + self.gradients + self.working_set


def round_needs(n: int, d: int, dtype: torch.dtype, *, batch: int, method: str,
                activations: int) -> RoundNeeds:
    """The bytes a round of n workers holds: the received matrix, the per-worker gradient
    buffer (all methods but the hand-written MLP backward, ``method="mlp"``, which writes
    into the matrix), and the activations of the examples computed at once (n * batch for
    ``vmap`` and ``mlp``, batch for ``loop``) and their gradients."""
    itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    matrix = n * d * itemsize
    examples = batch if method == "loop" else n * batch
    return RoundNeeds(n=n, d=d, itemsize=itemsize, received=matrix,
                      gradients=0 if method == "mlp" else matrix,
                      working_set=2 * examples * activations * itemsize,
                      examples=examples, activations=activations)


def size(nbytes: float) -> str:
    """``1.1 GB``, ``820 MB``, ``12 kB`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def count(value: int) -> str:
    """``11.2M``, ``79.5k``, ``25``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return str(value)


def check(needs: RoundNeeds, free: int, device: str) -> None:
    """:class:`MemoryBoundError` with the numbers when ``needs`` exceeds ``free`` bytes."""
    if needs.total <= free:
        return
    parts = [f"the received matrix needs {needs.n} x {count(needs.d)} x {needs.itemsize} B "
             f"= {size(needs.received)}"]
    if needs.gradients:
        parts.append(f"the per-worker gradients another {size(needs.gradients)}")
    parts.append(f"the workers' forward and backward passes about "
                 f"{size(needs.working_set)} ({count(needs.examples)} examples x "
                 f"{count(needs.activations)} activations x 2 x {needs.itemsize} B)")
    raise MemoryBoundError(
        f"the run does not fit on {device}: {', '.join(parts)}; {size(needs.total)} in all, "
        f"the device has {size(free)} free. Lower workers or batch_size, use a smaller "
        f"model, or another device")
