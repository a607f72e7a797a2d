"""A model as a function of one flat parameter vector; all workers' gradients at once."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from byzsgd.engine.mlpgrad import DenseMLPGradients, InputProduct, dense_relu_widths
from byzsgd.engine.placement import CPU, cpu_fast_paths, gather
from byzsgd.engine.sparse import SparseRows

#: How the n workers' gradients are computed (see :class:`FlatModel`).
METHODS = ("mlp", "vmap", "loop")
#: Training examples the server's BatchNorm running statistics are computed from, at most.
CALIBRATION_SAMPLES = 2048

LossFn = Callable[[Tensor, Tensor], Tensor]


class FlatModel:
    """Wraps ``module`` so that its parameters travel as one flat float32 vector of length d
    (the convention of the whole library: gradients are (n, d) tensors, flattened once, here).

    ``method`` chooses how the n workers' gradients are computed: ``"mlp"``, the hand-written
    backward of :mod:`byzsgd.engine.mlpgrad` (dense ReLU MLPs only; the default for them on
    the CPU, measured fastest in ``benchmarks/gradients.py``), ``"vmap"``,
    ``torch.func.vmap`` over workers, ``chunk`` workers per call (default: all that fit in
    memory, see :meth:`workers_per_call`), or ``"loop"``, a Python loop; the default per model
    and device is :func:`default_method`'s. The module's device (that of its parameters) is
    where everything is computed (:mod:`byzsgd.engine.placement`). ``loss_fn(logits,
    targets)`` is the workers' objective (mean cross-entropy by default; the ``"mlp"`` method
    computes that one only).

    **Buffers and normalization layers.** Buffers (BatchNorm's running mean and variance) are
    not parameters: they travel with the module, never in the flat vector of length d.
    LayerNorm and GroupNorm have no buffers and need nothing special; dropout draws a
    different mask per worker (``vmap(randomness="different")``, or the loop's sequential
    draws) from torch's global generator, which the simulator seeds per round.
    BatchNorm in training mode normalizes each worker's minibatch with *its own* batch
    statistics, as separate machines would: every worker gets its own copy of the buffers
    (batched under vmap), which its forward pass updates and which are then discarded, so
    no worker (honest or Byzantine) ever writes the server's buffers.

    The running statistics used for evaluation are kept on the server and computed by the
    server alone: before evaluating at parameters theta, :meth:`predict` sets the module's
    running mean and variance to the statistics of the activations at theta over a fixed
    sample of training inputs, ``calibration`` (the precise-BN estimate of Wu & Johnson,
    "Rethinking 'Batch' in BatchNorm", 2021; what ``torch.optim.swa_utils.update_bn`` does).
    Why this and not a running average of the workers' batch statistics: the server cannot
    tell honest statistics from forged ones (a robust rule is needed for them as for the
    gradients, and the simulator's knowledge of who is honest would be an oracle a real
    server lacks); recomputed from theta and the server's own data, the statistics depend on
    the workers only through theta, which the robust rule already protects, and they are a
    deterministic function of theta, so a resumed run evaluates exactly as an uninterrupted
    one. Without ``calibration`` (a FlatModel built by hand), the inputs being predicted
    serve as the calibration sample.
    """

    def __init__(self, module: nn.Module, *, method: str | None = None,
                 loss_fn: LossFn | None = None,
                 calibration: Tensor | None = None, chunk: int | None = None) -> None:
        self.module = module
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numels = [p.numel() for _, p in module.named_parameters()]
        self.d = sum(self.numels)
        #: Names of the module's buffers: each worker gets its own copy of them.
        self.buffer_names = [name for name, _ in module.named_buffers()]
        self.loss_fn = F.cross_entropy if loss_fn is None else loss_fn
        self.calibration = calibration
        self._calibrated: tuple[Tensor, Tensor] | None = None
        first = next(module.parameters(), None)
        #: Where the module's parameters are: where theta and the gradients live.
        self.device = CPU if first is None else first.device
        widths = dense_relu_widths(module) if loss_fn is None else None
        if method is None:
            device_type = "cpu" if cpu_fast_paths(self.device) else self.device.type
            method = default_method(module, widths is not None, device_type)
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method == "mlp" and widths is None:
            raise ValueError("method='mlp' needs a dense ReLU MLP ((Flatten,) Linear, ReLU, "
                             "..., Linear with biases) and the default cross-entropy loss")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 worker, got {chunk}")
        self.method = method
        #: Workers per ``vmap`` call of the ``"vmap"`` method; None: as many as fit in half
        #: the free memory of the model's device (:func:`worker_chunk`), decided on the first
        #: call for each input shape.
        self.chunk = chunk
        self._chunks: dict[tuple[int, ...], int] = {}
        self._mlp = DenseMLPGradients(widths) if method == "mlp" else None
        if self.buffer_names:
            self._worker_grad = vmap(grad(self._loss_with), in_dims=(None, 0, 0, 0),
                                     randomness="different")
            self._local_grad = vmap(grad(self._loss_with), in_dims=(0, 0, 0, 0),
                                    randomness="different")
            self._grad = grad(self._loss_with)
        else:
            self._worker_grad = vmap(grad(self.loss), in_dims=(None, 0, 0),
                                     randomness="different")
            self._local_grad = vmap(grad(self.loss), in_dims=(0, 0, 0),
                                    randomness="different")
            self._grad = grad(self.loss)
        self.train_x: Tensor | None = None
        #: The training inputs as sparse rows, for the hand-written MLP backward's first
        #: layer (:meth:`use_training_inputs`), else None.
        self.sparse_inputs: SparseRows | None = None

    def initial(self) -> Tensor:
        """The module's current parameters as a flat vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).clone()

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        return {name: chunk.view(shape) for name, chunk, shape in
                zip(self.names, torch.split(theta, self.numels), self.shapes, strict=True)}

    def buffers(self, n: int | None = None) -> dict[str, Tensor]:
        """Fresh copies of the module's buffers; with ``n``, stacked (n, ...) for n workers."""
        own = dict(self.module.named_buffers())
        if n is None:
            return {k: b.clone() for k, b in own.items()}
        return {k: b.unsqueeze(0).expand(n, *b.shape).clone() for k, b in own.items()}

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        if self.buffer_names:  # a copy, so that a training-mode forward leaves them alone
            return functional_call(self.module, {**self.unflatten(theta), **self.buffers()},
                                   (x,))
        return functional_call(self.module, self.unflatten(theta), (x,))

    def loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """``loss_fn`` (mean cross-entropy by default) of the minibatch (x, y) at ``theta``."""
        return self.loss_fn(self.logits(theta, x), y)

    def _loss_with(self, theta: Tensor, x: Tensor, y: Tensor,
                   buffers: dict[str, Tensor]) -> Tensor:
        out = functional_call(self.module, {**self.unflatten(theta), **buffers}, (x,))
        return self.loss_fn(out, y)

    def worker_gradients(self, theta: Tensor, x: Tensor, y: Tensor,
                         out: Tensor | None = None,
                         input_product: InputProduct | None = None) -> Tensor:
        """Gradients (n, d) of n workers at the same parameters; x is (n, b, *example_shape).
        Written into ``out`` (n, d) when given (the hand-written MLP backward writes there
        directly, the other methods copy). ``input_product`` may compute the first layer's
        product of the hand-written MLP backward (see :class:`DenseMLPGradients`); the other
        methods ignore it."""
        if self.method == "mlp":
            assert self._mlp is not None
            return self._mlp(theta, x, y, out, input_product)
        grads = self._gradients(theta, x, y, self._worker_grad)
        return grads if out is None else out.copy_(grads)

    def use_training_inputs(self, x: Tensor, *, sparse: bool = True) -> None:
        """Keep the training set's inputs x (N, ...) for :meth:`sample_gradients`, encoded
        once: as compressed sparse rows when they are mostly zero and the model is a dense
        MLP whose hand-written backward computes its first layer from them, on the CPU
        (:mod:`byzsgd.engine.sparse`; ``sparse=False`` keeps them dense). ``x`` is on the
        module's device, or in (pinned) CPU memory when it does not fit there
        (:mod:`byzsgd.engine.placement`)."""
        self.train_x = x
        compiled = self.method == "mlp" and cpu_fast_paths(self.device) \
            and x.device.type == "cpu"
        self.sparse_inputs = SparseRows.of(x) if sparse and compiled else None

    def inputs(self, samples: Tensor) -> Tensor:
        """The training inputs of the sample indices ``samples`` (k, b): (k, b, ...), on the
        module's device."""
        x = self.train_x
        assert x is not None, "use_training_inputs first"
        return gather(x, samples, self.device)

    def sample_gradients(self, theta: Tensor, samples: Tensor, y: Tensor,
                         out: Tensor | None = None) -> Tensor:
        """:meth:`worker_gradients` on the training samples ``samples`` (k, b) with labels
        ``y`` (k, b). With sparse inputs the first layer is computed from their non-zero
        values, which also write the dense inputs that the backward pass reads."""
        sparse, x = self.sparse_inputs, self.train_x
        if sparse is None or x is None:
            return self.worker_gradients(theta, self.inputs(samples), y, out)
        dense = torch.empty((samples.numel(), *x.shape[1:]), dtype=x.dtype, device=x.device)
        dense = dense.view(*samples.shape, *x.shape[1:])
        return self.worker_gradients(theta, dense, y, out,
                                     functools.partial(sparse.linear, samples, dense=dense))

    def local_gradients(self, thetas: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Gradients (n, d) of n workers each at its own parameters ``thetas`` (n, d)."""
        return self._gradients(thetas, x, y, self._local_grad)

    def _gradients(self, theta: Tensor, x: Tensor, y: Tensor, batched) -> Tensor:
        if self.method == "mlp":
            assert self._mlp is not None
            return self._mlp(theta, x, y)
        self.module.train()
        n = x.shape[0]
        if self.method == "vmap":
            k = self.workers_per_call(tuple(x.shape))
            parts = [self._vmapped(theta if theta.dim() == 1 else theta[i:i + k], x[i:i + k],
                                   y[i:i + k], batched) for i in range(0, n, k)]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        rows = [theta] * n if theta.dim() == 1 else list(theta)
        if self.buffer_names:
            return torch.stack([self._grad(rows[i], x[i], y[i], self.buffers())
                                for i in range(n)])
        return torch.stack([self._grad(rows[i], x[i], y[i]) for i in range(n)])

    def _vmapped(self, theta: Tensor, x: Tensor, y: Tensor, batched) -> Tensor:
        if self.buffer_names:
            return batched(theta, x, y, self.buffers(x.shape[0]))
        return batched(theta, x, y)

    def workers_per_call(self, shape: tuple[int, ...]) -> int:
        """How many of the n workers one ``vmap`` call takes for inputs of ``shape``
        (n, b, *example_shape): :attr:`chunk` if set, else :func:`worker_chunk` of the
        working set :func:`vmap_bytes` and :func:`memory_budget` (computed once per shape)."""
        n = shape[0]
        if self.chunk is not None:
            return min(self.chunk, n)
        if shape not in self._chunks:
            per_worker = vmap_bytes(self.module, shape[2:], shape[1], 1)
            self._chunks[shape] = worker_chunk(n, per_worker,
                                               memory_budget(_device_of(self.module)))
        return self._chunks[shape]

    # -- evaluation --------------------------------------------------------------------------

    def _running_stats(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.module.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    @torch.no_grad()
    def calibrate(self, theta: Tensor, x: Tensor, batch: int = 2048) -> None:
        """Set the module's BatchNorm running statistics (the server's) to the statistics of
        its activations at ``theta`` over the inputs ``x``: per BatchNorm layer, the average
        of the per-chunk batch means and (unbiased) variances, in evaluation mode otherwise
        (dropout off). No-op for a module without BatchNorm running statistics."""
        norms = self._running_stats()
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        self.module.eval()
        params = self.unflatten(theta)
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the chunks
                m.train()
            for i in range(0, x.shape[0], batch):
                functional_call(self.module, params, (self._on_device(x[i:i + batch]),))
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            self.module.eval()
        self._calibrated = (theta.detach().clone(), x)

    def _ensure_calibrated(self, theta: Tensor, x: Tensor) -> None:
        source = self.calibration if self.calibration is not None else x
        done = self._calibrated
        if done is not None and done[1] is source and torch.equal(done[0], theta):
            return
        self.calibrate(theta, source)

    @torch.no_grad()
    def predict(self, theta: Tensor, x: Tensor, batch: int = 2048) -> Tensor:
        """Logits for ``x`` in evaluation mode (dropout off; BatchNorm with the server's
        running statistics at ``theta``, see the class docstring), in chunks of ``batch``
        examples computed on the module's device (copied there one by one when ``x`` is
        elsewhere)."""
        if self.buffer_names and self._running_stats():
            self._ensure_calibrated(theta, x)
        self.module.eval()
        params = self.unflatten(theta)
        chunks = (self._on_device(x[i:i + batch]) for i in range(0, x.shape[0], batch))
        return torch.cat([functional_call(self.module, params, (c,)) for c in chunks])

    def _on_device(self, x: Tensor) -> Tensor:
        return x.to(self.device, non_blocking=x.is_pinned())


# -- how the workers' gradients are batched: one rule, per device --------------------------------

def _device_of(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def default_method(module: nn.Module, dense_mlp: bool, device_type: str) -> str:
    """The gradient method for ``module`` on a device of ``device_type`` (``"cpu"``,
    ``"cuda"``, ...), chosen by measurement (``python benchmarks/gradients.py [--conv]``).

    On the CPU: the hand-written backward for dense ReLU MLPs with the default loss
    (``dense_mlp``); a loop over workers for conv nets -- at n = 25, b = 32, synthetic
    CIFAR-shaped data, one ``vmap`` over all workers took 1.24x the loop's time for
    ``cnn-cifar`` and chunks of 5 workers 2.48x; for ``resnet20`` 1.04x and 0.97x, a tie
    within the noise (2 shared cores, load 10-19), where the loop needs the least memory and
    keeps the numbers of earlier runs; ``vmap`` for the rest.
    Off the CPU: ``vmap`` for every model, in chunks of workers when memory is short
    (:meth:`FlatModel.workers_per_call`) -- one batched kernel launch per layer instead of n,
    the reason GPU per-sample-gradient code vmaps (not measured here: ``scripts/gpu-check.sh``
    prints the loop/vmap/chunk table on a GPU)."""
    if device_type != "cpu":
        return "vmap"
    if dense_mlp:
        return "mlp"
    conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())
    return "loop" if conv else "vmap"


def saved_bytes(module: nn.Module, example_shape: tuple[int, ...], batch: int) -> int:
    """Bytes autograd keeps for the backward pass of ``module`` (training mode, buffers
    copied so that BatchNorm's statistics stay untouched) on a minibatch of ``batch`` zero
    examples of ``example_shape``, on the module's device."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    params = dict(module.named_parameters())
    device, dtype = _device_of(module), next(iter(params.values())).dtype
    buffers = {k: b.clone() for k, b in module.named_buffers()}
    x = torch.zeros((batch, *example_shape), device=device, dtype=dtype)
    training = module.training
    module.train()
    try:  # forked RNG: a dropout layer's draw here must not shift the run's random stream
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            functional_call(module, {**params, **buffers}, (x,))
    finally:
        module.train(training)
    return total


def vmap_bytes(module: nn.Module, example_shape: tuple[int, ...] | torch.Size, batch: int,
               n: int) -> int:
    """Estimated working set, in bytes, of the n workers' gradients in one ``vmap`` call
    (minibatches of ``batch`` examples of ``example_shape``): n x batch x the activations
    autograd saves per example (measured on a forward pass of 2 and 4 examples, so that what
    does not grow with the batch, such as saved weights, counts once), plus the gradients
    twice (the per-parameter results and the flat (n, d) matrix). Not counted: the inputs,
    the received matrix and the rule's buffers."""
    if n < 1 or batch < 1:
        raise ValueError(f"vmap_bytes needs n >= 1 and batch >= 1, got n={n}, batch={batch}")
    shape = tuple(example_shape)
    two, four = saved_bytes(module, shape, 2), saved_bytes(module, shape, 4)
    per_example = max(0, (four - two) // 2)
    fixed = max(0, two - 2 * per_example)
    d = sum(p.numel() * p.element_size() for p in module.parameters())
    return n * (batch * per_example + 2 * d) + fixed


def memory_budget(device: torch.device, fraction: float = 0.5) -> int:
    """Bytes the workers' gradients may use on ``device``: ``fraction`` of its free memory
    (CUDA: ``torch.cuda.mem_get_info``; CPU: the available physical memory), leaving the rest
    to the received matrix, the rule and other processes."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not POSIX: assume it fits
            return 1 << 62
    return int(fraction * free)


def worker_chunk(n: int, per_worker: int, budget: int) -> int:
    """Workers per ``vmap`` call: all n when their working set (``per_worker`` bytes each)
    fits in ``budget`` bytes, else as many as fit, at least 1 (then a loop of single workers).
    """
    if n < 1:
        raise ValueError(f"worker_chunk needs n >= 1, got n={n}")
    if per_worker < 1:
        raise ValueError(f"worker_chunk needs per_worker >= 1 byte, got {per_worker}")
    return max(1, min(n, budget // per_worker))
