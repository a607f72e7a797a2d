"""Where a run's tensors live: its device, the data set on it, and the CPU-only fast paths.

A run computes on one torch device (``config.device``, resolved by :mod:`byzsgd.devices`):
the model's flat parameters, the workers' minibatch indices, the received matrix, the
attack's rows, the rule, the server's step and the evaluation all live there. What stays on
the CPU, on purpose: the seeded generators and what they draw (the Byzantine rows, the
minibatch permutations, the attack's and the rules' random draws), drawn on the CPU and then
moved, so that every device sees the same draws; and the small (n,)- or (n, n)-sized
bookkeeping of the rules.

The data set goes to the device once, at build time, when its bytes fit in
:data:`DATA_FRACTION` of the device memory left free after the round's own needs
(:mod:`byzsgd.engine.memory`); otherwise its inputs stay in pinned CPU memory and each
minibatch is gathered there and copied to the device (asynchronously). Labels always go.

The compiled CPU kernels of the engine (the sparse first layer of :mod:`.sparse`, the
hand-written MLP backward of :mod:`.mlpgrad` and its batched GEMM of :mod:`._blas`) run on
the CPU only; :func:`cpu_fast_paths` is the one place that says whether a run uses them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import Tensor

from byzsgd.data import Dataset

#: The share of the device's free memory (after the round's needs) the data set may take to
#: be copied there once; above it, minibatches travel from pinned CPU memory.
DATA_FRACTION = 0.5

CPU = torch.device("cpu")


def device_name(device: torch.device) -> str:
    """The device as a run records it: ``"cpu"``, ``"cuda:0"`` (an index always, also for a
    bare ``"cuda"`` or ``auto``), ``"mps"``."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def cpu_fast_paths(device: torch.device) -> bool:
    """Whether a run on ``device`` uses the engine's compiled CPU paths (sparse first layer,
    hand-written MLP backward, MKL's batched GEMM): on the CPU only; elsewhere the torch path
    (``vmap`` of autograd) computes the same gradients."""
    return device.type == "cpu"


def repeatable(device: torch.device) -> None:
    """Make the runs of this process on ``device`` repeat their floats (same seed, same
    device type, same numbers): on CUDA, cuDNN's deterministic algorithms without
    autotuning, and cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, read when cuBLAS
    starts: a process that used cuBLAS before keeps its setting). Nothing to do on the CPU."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def dataset_bytes(dataset: Dataset) -> int:
    """The bytes of the data set's four tensors."""
    return sum(t.numel() * t.element_size() for t in
               (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test))


def place_dataset(dataset: Dataset, device: torch.device, budget: int) -> tuple[Dataset, bool]:
    """``(dataset on device, whether its inputs are there)``: all of it when it fits in
    ``budget`` bytes (or the device is the CPU: ``dataset`` itself), else its labels only and
    its inputs in pinned CPU memory (:func:`gather`)."""
    if device.type == "cpu":
        return dataset, True
    fits = dataset_bytes(dataset) <= budget

    def inputs(x: Tensor) -> Tensor:
        if fits:
            return x.to(device)
        return x.pin_memory() if device.type == "cuda" else x

    placed = dataclasses.replace(dataset, x_train=inputs(dataset.x_train),
                                 y_train=dataset.y_train.to(device),
                                 x_test=inputs(dataset.x_test),
                                 y_test=dataset.y_test.to(device))
    return placed, fits


def gather(x: Tensor, samples: Tensor, device: torch.device) -> Tensor:
    """The examples ``x[samples]`` (samples (k, b) -> (k, b, ...)) on ``device``, gathered
    where ``x`` is (on the CPU, pinned, when it did not fit on the device) and copied."""
    flat = samples.reshape(-1)
    # index_select on the flat view: ~3x faster than advanced indexing of (N, C, H, W)
    rows = x.view(x.shape[0], -1)
    if x.device == device:
        picked = rows.index_select(0, flat.to(device))
    else:
        staging = torch.empty((flat.numel(), rows.shape[1]), dtype=x.dtype, device=x.device,
                              pin_memory=x.is_pinned())
        torch.index_select(rows, 0, flat.to(x.device), out=staging)
        picked = staging.to(device, non_blocking=staging.is_pinned())
    return picked.view(*samples.shape, *x.shape[1:])


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (tensors in dicts, lists and tuples, and plain values) with its tensors on
    ``device``: a checkpoint's state, whichever device wrote it."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value
