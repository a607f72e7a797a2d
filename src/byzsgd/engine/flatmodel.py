"""A model as a function of one flat parameter vector; all workers' gradients at once."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from byzsgd.engine.mlpgrad import DenseMLPGradients, InputProduct, dense_relu_widths
from byzsgd.engine.sparse import SparseRows

#: How the n workers' gradients are computed (see :class:`FlatModel`).
METHODS = ("mlp", "vmap", "loop")


class FlatModel:
    """Wraps ``module`` so that its parameters travel as one flat float32 vector of length d
    (the convention of the whole library: gradients are (n, d) tensors, flattened once, here).

    ``method`` chooses how the n workers' gradients are computed: ``"mlp"``, the hand-written
    backward of :mod:`byzsgd.engine.mlpgrad` (dense ReLU MLPs only; the default for them,
    measured fastest in ``benchmarks/gradients.py``), ``"vmap"``, one ``torch.func.vmap`` over
    workers (default for other models without convolutions), or ``"loop"``, a Python loop
    (conv nets, where vmap's batched convolutions were slower here).
    """

    def __init__(self, module: nn.Module, *, method: str | None = None) -> None:
        self.module = module
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numels = [p.numel() for _, p in module.named_parameters()]
        self.d = sum(self.numels)
        widths = dense_relu_widths(module)
        if method is None:
            conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())
            method = "mlp" if widths else "loop" if conv else "vmap"
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method == "mlp" and widths is None:
            raise ValueError("method='mlp' needs a dense ReLU MLP ((Flatten,) Linear, ReLU, "
                             "..., Linear with biases)")
        self.method = method
        self._mlp = DenseMLPGradients(widths) if method == "mlp" else None
        self._worker_grad = vmap(grad(self.loss), in_dims=(None, 0, 0), randomness="different")
        self._local_grad = vmap(grad(self.loss), in_dims=(0, 0, 0), randomness="different")
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

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.module, self.unflatten(theta), (x,))

    def loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of the minibatch (x, y) at parameters ``theta``."""
        return F.cross_entropy(self.logits(theta, x), y)

    def worker_gradients(self, theta: Tensor, x: Tensor, y: Tensor,
                         out: Tensor | None = None,
                         input_product: InputProduct | None = None) -> Tensor:
        """Gradients (n, d) of n workers at the same parameters; x is (n, b, C, H, W).
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
        MLP whose hand-written backward computes its first layer from them
        (:mod:`byzsgd.engine.sparse`; ``sparse=False`` keeps them dense)."""
        self.train_x = x
        self.sparse_inputs = SparseRows.from_dense(x) if sparse and self.method == "mlp" \
            else None

    def inputs(self, samples: Tensor) -> Tensor:
        """The training inputs of the sample indices ``samples`` (k, b): (k, b, ...)."""
        x = self.train_x
        assert x is not None, "use_training_inputs first"
        # index_select on the flat view: ~3x faster than advanced indexing of (N, C, H, W)
        rows = x.view(x.shape[0], -1).index_select(0, samples.reshape(-1))
        return rows.view(*samples.shape, *x.shape[1:])

    def sample_gradients(self, theta: Tensor, samples: Tensor, y: Tensor,
                         out: Tensor | None = None) -> Tensor:
        """:meth:`worker_gradients` on the training samples ``samples`` (k, b) with labels
        ``y`` (k, b). With sparse inputs the first layer is computed from their non-zero
        values, which also write the dense inputs that the backward pass reads."""
        sparse, x = self.sparse_inputs, self.train_x
        if sparse is None or x is None:
            return self.worker_gradients(theta, self.inputs(samples), y, out)
        dense = torch.empty((samples.numel(), *x.shape[1:]), dtype=x.dtype)
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
        if self.method == "vmap":
            return batched(theta, x, y)
        rows = [theta] * x.shape[0] if theta.dim() == 1 else list(theta)
        return torch.stack([self._grad(rows[i], x[i], y[i]) for i in range(x.shape[0])])

    @torch.no_grad()
    def predict(self, theta: Tensor, x: Tensor, batch: int = 2048) -> Tensor:
        """Logits for ``x`` in evaluation mode (dropout off), in chunks."""
        self.module.eval()
        params = self.unflatten(theta)
        return torch.cat([functional_call(self.module, params, (x[i:i + batch],))
                          for i in range(0, x.shape[0], batch)])
