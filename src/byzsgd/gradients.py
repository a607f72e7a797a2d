"""Per-worker gradients for a user's own training loop, and the flat-vector plumbing around
them.

byzsgd's rules take an (n, d) matrix, one flattened gradient per worker. In one's own loop::

    grads = per_worker_gradients(model, F.cross_entropy, inputs, targets)   # (n, d)
    aggregate = aggregators.get("krum")(grads, f=2)                          # (d,)
    write_grad(model, aggregate)                                             # into .grad
    optimizer.step()

:func:`per_worker_gradients` runs the module once per worker in one ``torch.func.vmap`` over
workers (``functional_call`` with the module's own parameters); buffers are handled as in the
simulator (:class:`byzsgd.engine.FlatModel`): every worker gets its own copy, so BatchNorm
normalizes each worker's minibatch with its own statistics and the module's running
statistics are left untouched (recompute them from trusted data, e.g. with
``torch.optim.swa_utils.update_bn``). Dropout draws a different mask per worker from torch's
global generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from byzsgd.engine.flatmodel import FlatModel

__all__ = ["flatten_like", "per_worker_gradients", "unflatten", "write_grad"]


def per_worker_gradients(module: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                         inputs: Tensor, targets: Tensor, *, method: str = "vmap") -> Tensor:
    """Gradients (n, d) of ``loss_fn(module(inputs[i]), targets[i])`` for n workers i at the
    module's current parameters, one flattened row per worker in the order of
    ``module.parameters()``.

    ``inputs`` is (n, b, ...) and ``targets`` (n, b, ...): worker i's minibatch is
    ``inputs[i]``. ``method="loop"`` runs the workers one after the other instead (same
    numbers to float rounding; faster for convolutions on some CPUs). The module is run in
    training mode and its mode restored afterwards; its buffers are not modified.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"per_worker_gradients: module must be an nn.Module, "
                        f"got {type(module).__name__}")
    if method not in ("vmap", "loop"):
        raise ValueError(f"per_worker_gradients: method must be 'vmap' or 'loop', "
                         f"got {method!r}")
    if inputs.dim() < 2 or targets.dim() < 1 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"per_worker_gradients: inputs must be (n, b, ...) and targets "
                         f"(n, b, ...) with the same n, got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    flat = FlatModel(module, method=method, loss_fn=loss_fn)
    training = module.training
    try:
        return flat.worker_gradients(flatten_like(module), inputs, targets)
    finally:
        module.train(training)


def _parameters(module: nn.Module) -> list[tuple[str, Tensor]]:
    return list(module.named_parameters())


def flatten_like(module: nn.Module,
                 tensors: Iterable[Tensor] | Mapping[str, Tensor] | None = None) -> Tensor:
    """One flat vector of ``tensors`` in the order of ``module.parameters()``, each checked to
    have its parameter's shape: the module's parameters themselves when ``tensors`` is None
    (a detached copy), a sequence in parameter order, or a dict by parameter name (what
    ``torch.func.grad`` over ``dict(module.named_parameters())`` returns)."""
    params = _parameters(module)
    if tensors is None:
        values = [p.detach() for _, p in params]
    elif isinstance(tensors, Mapping):
        missing = [name for name, _ in params if name not in tensors]
        if missing:
            raise ValueError(f"flatten_like: no tensor for parameter(s) {', '.join(missing)}")
        values = [tensors[name] for name, _ in params]
    else:
        values = list(tensors)
        if len(values) != len(params):
            raise ValueError(f"flatten_like: the module has {len(params)} parameters, got "
                             f"{len(values)} tensors")
    for (name, p), v in zip(params, values, strict=True):
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"flatten_like: {name} has shape {tuple(p.shape)}, got a tensor "
                             f"of shape {tuple(v.shape)}")
    if not values:
        return torch.empty(0)
    return torch.cat([v.reshape(-1) for v in values])


def unflatten(vector: Tensor, module: nn.Module) -> dict[str, Tensor]:
    """The (d,) ``vector`` cut into views shaped like the module's parameters, by name."""
    params = _parameters(module)
    d = sum(p.numel() for _, p in params)
    if vector.dim() != 1 or vector.shape[0] != d:
        raise ValueError(f"unflatten: the module has d = {d} parameters, got a vector of "
                         f"shape {tuple(vector.shape)}")
    chunks = torch.split(vector, [p.numel() for _, p in params])
    return {name: c.view(p.shape) for (name, p), c in zip(params, chunks, strict=True)}


@torch.no_grad()
def write_grad(module: nn.Module, vector: Tensor) -> None:
    """Set every parameter's ``.grad`` to its part of the (d,) ``vector`` (e.g. an aggregate
    of per-worker gradients), ready for ``optimizer.step()``."""
    for name, chunk in unflatten(vector, module).items():
        p = module.get_parameter(name)
        g = chunk.to(dtype=p.dtype, device=p.device)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
