"""Per-worker gradients of a dense ReLU MLP, with the backward pass written out by hand.

The papers' MNIST models are multi-layer perceptrons (784-100-10 in Hidden Vulnerability and
A Little Is Enough, 784-128-128-10 in Generalized Byzantine-tolerant SGD) trained on the mean
cross-entropy of each worker's minibatch. For them the n workers' gradients need no autograd:

* forward, all n * b samples at once when the workers share theta (one matrix product per
  layer, a_l = h_{l-1} W_l^T + b_l, h_l = ReLU(a_l)), or one batched product per layer when
  each worker has its own parameters (model averaging);
* delta_L = (softmax(a_L) - e_y) / b, the gradient of the mean cross-entropy in the logits;
* per worker w and layer l: dL/dW_l = delta_l^T h_{l-1} over w's b samples (one batched
  product, written in place: :mod:`byzsgd.engine._blas`), dL/db_l = sum of delta_l;
  delta_{l-1} = (delta_l W_l) * [h_{l-1} > 0].

This is what ``vmap(grad(loss))`` computes, in fewer and larger kernels with no autograd
bookkeeping (measured in ``benchmarks/gradients.py``); the results agree to float32 rounding
(``tests/test_engine.py``). Gradients are written straight into the rows of the (n, d) output in
torch's parameter order (each ``nn.Linear``'s weight (out, in) row-major, then its bias).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from byzsgd.engine._blas import batched_at_b

#: ``(weight, bias) -> x @ weight.T + bias`` for a batch x held in another form.
InputProduct = Callable[[Tensor, Tensor], Tensor]


def dense_relu_widths(module: nn.Module) -> list[int] | None:
    """The layer widths [d_in, h_1, ..., h_k, classes] if ``module`` (or its ``layers``) is
    (Flatten,) Linear, ReLU, ..., Linear, all with biases and nothing else, else None."""
    layers = list(getattr(module, "layers", module).children())
    if layers and type(layers[0]) is nn.Flatten:
        layers = layers[1:]
    if len(layers) % 2 != 1:
        return None
    widths: list[int] = []
    for i, layer in enumerate(layers):
        if i % 2 == 1:
            if type(layer) is not nn.ReLU:
                return None
            continue
        if type(layer) is not nn.Linear or layer.bias is None:
            return None
        if widths and widths[-1] != layer.in_features:
            return None
        widths = widths or [layer.in_features]
        widths.append(layer.out_features)
    return widths


class DenseMLPGradients:
    """Per-worker gradients of the mean cross-entropy of a dense ReLU MLP with layer
    ``widths`` [d_in, h_1, ..., classes] (see the module docstring)."""

    def __init__(self, widths: list[int]) -> None:
        if len(widths) < 2:
            raise ValueError(f"an MLP needs at least an input and an output width, got {widths}")
        self.widths = list(widths)
        # (weight start, bias start, end) of each layer in the flat parameter vector
        self.slots: list[tuple[int, int, int]] = []
        o = 0
        for fan_in, fan_out in itertools.pairwise(widths):
            self.slots.append((o, o + fan_out * fan_in, o + fan_out * fan_in + fan_out))
            o += fan_out * fan_in + fan_out
        self.d = o

    def __call__(self, theta: Tensor, x: Tensor, y: Tensor, out: Tensor | None = None,
                 input_product: InputProduct | None = None) -> Tensor:
        """Gradients (n, d) for inputs x (n, b, ...) with labels y (n, b), at ``theta`` (d,)
        shared by all workers or (n, d), one row per worker; written into ``out`` (an (n, d)
        tensor of theta's dtype whose rows are contiguous) when given. ``input_product``,
        for a shared theta, computes the first layer's ``x W^T + b`` (n * b, h_1) from
        another form of the same x (its non-zero values: :mod:`byzsgd.engine.sparse`); it
        is called before x is read, so it may be what fills x."""
        n, b = y.shape
        if x.shape[:2] != (n, b) or x[0, 0].numel() != self.widths[0]:
            raise ValueError(f"inputs of shape {tuple(x.shape)} do not match labels "
                             f"{(n, b)} and {self.widths[0]} input features")
        shared = theta.dim() == 1
        if theta.shape[-1] != self.d or (not shared and theta.shape[0] != n):
            raise ValueError(f"theta must be ({self.d},) or ({n}, {self.d}), "
                             f"got {tuple(theta.shape)}")
        if out is not None and (out.shape != (n, self.d) or out.dtype != theta.dtype
                                or out.stride(1) != 1):
            raise ValueError(f"out must be a ({n}, {self.d}) {theta.dtype} tensor with "
                             f"contiguous rows, got {tuple(out.shape)} {out.dtype}")
        theta = theta.detach()
        last = len(self.slots) - 1
        acts = [x.detach().reshape(n * b, self.widths[0])]
        weights = []
        for l, ((w0, b0, end), fan_in, fan_out) in enumerate(
                zip(self.slots, self.widths, self.widths[1:], strict=False)):
            if shared:
                weight = theta[w0:b0].view(fan_out, fan_in)
                a = (input_product(weight, theta[b0:end]) if l == 0 and input_product
                     else torch.addmm(theta[b0:end], acts[-1], weight.T))
            else:
                weight = theta[:, w0:b0].view(n, fan_out, fan_in)
                a = torch.baddbmm(theta[:, None, b0:end], acts[-1].view(n, b, fan_in),
                                  weight.transpose(1, 2)).view(n * b, fan_out)
            weights.append(weight)
            acts.append(a if l == last else a.relu_())
        delta = torch.softmax(acts.pop(), dim=1)
        delta[torch.arange(n * b, device=delta.device), y.reshape(-1)] -= 1.0
        delta.mul_(1.0 / b)
        if out is None:
            out = torch.empty(n, self.d, dtype=delta.dtype, device=delta.device)
        for l in range(last, -1, -1):
            (w0, b0, end), fan_in, fan_out = self.slots[l], self.widths[l], self.widths[l + 1]
            per_worker = delta.view(n, b, fan_out)
            batched_at_b(per_worker, acts[l].view(n, b, fan_in), out[:, w0:b0])
            torch.sum(per_worker, dim=1, out=out[:, b0:end])
            if l:
                back = delta @ weights[l] if shared else torch.bmm(
                    per_worker, weights[l]).view(n * b, fan_in)
                delta = back.mul_(acts[l] > 0)  # ReLU'(a) = [a > 0] = [h > 0]
        return out
