"""The models of the papers' experiments, built with a deterministic initialization.

``build(name, input_shape, num_classes, generator=g)`` returns a :class:`Classifier` whose
weights are Xavier/Glorot-uniform and biases zero (Hidden Vulnerability 5.1: "both use the
Xavier weight initialization algorithm"), drawn from ``g`` only: the global random state is
neither used nor advanced (the layers are created on the meta device, then materialized and
initialized from ``g``), so the same seed always gives the same model.

Every model maps images of shape (..., C, H, W) to logits of shape (..., num_classes). They
also accept a single unbatched image (C, H, W), which is what per-example gradients under
:func:`torch.func.vmap` see. They are built for :func:`torch.func.functional_call` +
``vmap`` over a leading worker dimension of parameters and data: no in-place operation,
no buffer, no BatchNorm; the dropout of ``cnn-generalized`` and ``cnn-fall`` needs
``vmap(..., randomness="different")`` (or ``"same"``) in training mode.

Parameter counts below are for MNIST-shaped (1, 28, 28) / CIFAR-shaped (3, 32, 32) input
and 10 classes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Shape = tuple[int, int, int]


class Classifier(nn.Module):
    """A feed-forward classifier: ``layers`` applied to images of one fixed shape."""

    def __init__(self, name: str, input_shape: Shape, num_classes: int,
                 layers: nn.Sequential) -> None:
        super().__init__()
        self.name = name
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        # Shapes are static under vmap/functional_call, so this check costs nothing there.
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.input_shape:
            raise ValueError(f"{self.name}: built for images of shape {self.input_shape} "
                             f"(input (..., C, H, W)), got input of shape {tuple(x.shape)}")
        return self.layers(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_shape={self.input_shape}"


def _flatten() -> nn.Module:
    # Flattens (C, H, W) whether or not a batch dimension precedes it.
    return nn.Flatten(start_dim=-3)


def _mlp(hidden: Sequence[int]) -> Callable[[Shape, int], nn.Sequential]:
    def make(shape: Shape, k: int) -> nn.Sequential:
        widths = [shape[0] * shape[1] * shape[2], *hidden]
        layers: list[nn.Module] = [_flatten()]
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], k))
        return nn.Sequential(*layers)

    return make


def _pooled(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1 if size >= kernel else 0


def _cnn_cifar(shape: Shape, k: int) -> nn.Sequential:
    """Hidden Vulnerability 5.1 / A Little Is Enough 4, "7-layer" CIFAR-10 CNN.

    conv 3x3, 16 maps, stride 1 -> max-pool 3x3 -> conv 4x4, 64 maps, stride 1 -> max-pool
    4x4 -> FC 384 -> FC 192 -> output, ReLU on hidden layers. The papers leave padding and
    pooling strides open. Our reading: "same"-padded convolutions and overlapping max-pooling
    with stride 2 and no padding (the convention of the TensorFlow CIFAR-10 tutorial model that
    this architecture's 384/192 dense layers come from). On 3x32x32 input: 32 -> pool 15 ->
    pool 6, so FC 384 sees 64*6*6 = 2,304 features and the model has **977,866** parameters,
    matching the papers' "10^6" / "d ~ 1M". (Other readings give: unpadded convolutions
    486,346; stride-2 "same"-padded pooling 1,665,994; non-overlapping pooling 191,434, or
    117,706 with unpadded convolutions.) The 4x4 convolution is padded like TensorFlow's
    "SAME": 1 row/column before, 2 after. On 1x28x28 input: 28 -> 13 -> 5, 707,242
    parameters.
    """
    c, h, w = shape
    h2, w2 = (_pooled(_pooled(s, 3, 2), 4, 2) for s in (h, w))
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, stride=1, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        # Explicit asymmetric padding: Conv2d(padding="same") warns for even kernels.
        nn.ZeroPad2d((1, 2, 1, 2)),
        nn.Conv2d(16, 64, 4, stride=1), nn.ReLU(),
        nn.MaxPool2d(4, stride=2),
        _flatten(),
        nn.Linear(64 * h2 * w2, 384), nn.ReLU(),
        nn.Linear(384, 192), nn.ReLU(),
        nn.Linear(192, k),
    )


def _conv_stack(c: int) -> list[nn.Module]:
    # Generalized Byzantine-tolerant SGD, appendix Table 3, up to flatten1. "pool size=2" is
    # read as 2x2 max-pooling with stride 2 (MXNet's symbolic Pooling would default to stride
    # 1, which would make fc1 alone ~29M parameters wide: surely not what was run).
    return [
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.2),
        _flatten(),
    ]


def _cnn_generalized(shape: Shape, k: int) -> nn.Sequential:
    """Generalized Byzantine-tolerant SGD (Xie et al., 2018), appendix Table 3.

    4 conv 3x3 pad 1 (32, 32, 64, 64 channels, ReLU), max-pool 2 + dropout 0.2 after the
    second and fourth, FC 512 + dropout 0.2, FC 512 + dropout 0.2, output. 2,431,018
    parameters on 3x32x32 input, 1,938,922 on 1x28x28.
    """
    c, h, w = shape
    return nn.Sequential(
        *_conv_stack(c),
        nn.Linear(64 * (h // 4) * (w // 4), 512), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(512, k),
    )


def _cnn_fall(shape: Shape, k: int) -> nn.Sequential:
    """Fall of Empires (Xie et al., 2019), 6.1: "a CNN with 4 convolutional layers followed by
    1 fully connected layer", in MXNet; its appendix table is not in our copy.

    Our reading: the convolutional part of the same authors' MXNet CNN of Generalized
    Byzantine-tolerant SGD (Table 3: 4 conv 3x3 pad 1 with 32, 32, 64, 64 channels, ReLU, 2x2
    max-pool + dropout 0.2 after the second and fourth), followed directly by the one fully
    connected (output) layer. 106,538 parameters on 3x32x32 input, 96,362 on 1x28x28.
    """
    c, h, w = shape
    return nn.Sequential(*_conv_stack(c), nn.Linear(64 * (h // 4) * (w // 4), k))


def _logreg(shape: Shape, k: int) -> nn.Sequential:
    return nn.Sequential(_flatten(), nn.Linear(shape[0] * shape[1] * shape[2], k))


# name -> (builder, minimum image side, one-line description)
_MODELS: dict[str, tuple[Callable[[Shape, int], nn.Sequential], int, str]] = {
    "logreg": (_logreg, 1,
               "linear softmax classifier (multinomial logistic regression); 7,850 params "
               "on 1x28x28"),
    "mlp": (_mlp([100]), 1,
            "784-100-10 ReLU MLP of Hidden Vulnerability 5.1 / A Little Is Enough 4; "
            "79,510 params on 1x28x28"),
    "mlp-2x128": (_mlp([128, 128]), 1,
                  "784-128-128-10 ReLU MLP of Generalized Byzantine-tolerant SGD (Table 2); "
                  "118,282 params on 1x28x28"),
    "cnn-cifar": (_cnn_cifar, 9,
                  "7-layer CIFAR-10 CNN of Hidden Vulnerability 5.1 / A Little Is Enough 4 "
                  "(conv16-pool-conv64-pool-384-192); 977,866 params on 3x32x32"),
    "cnn-generalized": (_cnn_generalized, 4,
                        "CNN of Generalized Byzantine-tolerant SGD (Table 3): 4 conv, "
                        "2 pools, dropout, FC 512-512; 2,431,018 params on 3x32x32"),
    "cnn-fall": (_cnn_fall, 4,
                 "CNN of Fall of Empires 6.1 (our reading): 4 conv + 1 FC; "
                 "106,538 params on 3x32x32"),
}


def names() -> list[str]:
    """The names :func:`build` accepts."""
    return list(_MODELS)


def describe(name: str) -> str:
    """A one-line description of model ``name``."""
    _known(name)
    return _MODELS[name][2]


DESCRIPTIONS: dict[str, str] = {name: spec[2] for name, spec in _MODELS.items()}


def _known(name: str) -> None:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(_MODELS)}")


def _check_shape(name: str, input_shape: Sequence[int], num_classes: int,
                 min_side: int) -> Shape:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                  for s in shape):
        raise ValueError(f"{name}: input_shape must be three positive integers (C, H, W), "
                         f"got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{name}: num_classes must be an integer >= 2, got {num_classes!r}")
    if min(shape[1], shape[2]) < min_side:
        raise ValueError(f"{name}: images must be at least {min_side}x{min_side} pixels for "
                         f"its convolutions and poolings, got input_shape {shape}")
    return (shape[0], shape[1], shape[2])


@torch.no_grad()
def _initialize(model: nn.Module, generator: torch.Generator | None) -> None:
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"no initialization rule for {type(module).__name__}")
        nn.init.xavier_uniform_(module.weight, generator=generator)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build(name: str, input_shape: Sequence[int], num_classes: int, *,
          generator: torch.Generator | None = None) -> Classifier:
    """Build model ``name`` for images of shape ``input_shape`` (C, H, W) and ``num_classes``.

    Weights are Xavier-uniform and biases zero, drawn from ``generator`` (the global random
    state when ``None``). Raises ``ValueError`` for an unknown name or a shape the model
    cannot take (e.g. images too small for its poolings).
    """
    _known(name)
    make, min_side, _ = _MODELS[name]
    shape = _check_shape(name, input_shape, num_classes, min_side)
    # Created on the meta device: the default initialization would otherwise draw from (and
    # advance) the global random state, making results depend on unrelated code.
    with torch.device("meta"):
        layers = make(shape, num_classes)
    model = Classifier(name, shape, num_classes, layers).to_empty(device="cpu")
    _initialize(model, generator)
    return model


def num_parameters(model: nn.Module) -> int:
    """The number of scalar parameters d of ``model``."""
    return sum(p.numel() for p in model.parameters())
