"""The networks of the four papers' experiments, registered under their names.

Every model maps images of shape (..., C, H, W) to logits of shape (..., num_classes). They
also accept a single unbatched image (C, H, W), which is what per-example gradients under
:func:`torch.func.vmap` see. They are built for :func:`torch.func.functional_call` +
``vmap`` over a leading worker dimension of parameters and data: no in-place operation,
no buffer, no BatchNorm; the dropout of ``cnn-generalized`` and ``cnn-fall`` needs
``vmap(..., randomness="different")`` (or ``"same"``) in training mode. Weights are
Xavier/Glorot-uniform and biases zero (Hidden Vulnerability 5.1: "both use the Xavier weight
initialization algorithm"; :func:`byzsgd.models.build`).

Parameter counts below are for MNIST-shaped (1, 28, 28) / CIFAR-shaped (3, 32, 32) input
and 10 classes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn

from byzsgd.models._registry import register

Shape = tuple[int, int, int]


def image_shape(shape: Sequence[int], min_side: int = 1) -> Shape:
    """``shape`` as (C, H, W), checked: three positive integers, H and W >= ``min_side``."""
    if len(shape) != 3:
        raise ValueError(f"input_shape must be three positive integers (C, H, W), "
                         f"got {tuple(shape)!r}")
    if min(shape[1], shape[2]) < min_side:
        raise ValueError(f"images must be at least {min_side}x{min_side} pixels for "
                         f"its convolutions and poolings, got input_shape {tuple(shape)}")
    return (shape[0], shape[1], shape[2])


def _flatten() -> nn.Module:
    # Flattens (C, H, W) whether or not a batch dimension precedes it.
    return nn.Flatten(start_dim=-3)


def mlp_layers(shape: Sequence[int], hidden: Sequence[int], k: int) -> nn.Sequential:
    """Flatten, then Linear + ReLU per ``hidden`` width, then Linear to ``k`` logits."""
    c, h, w = image_shape(shape)
    widths = [c * h * w, *hidden]
    layers: list[nn.Module] = [_flatten()]
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], k))
    return nn.Sequential(*layers)


@register("logreg", summary="linear softmax classifier (multinomial logistic regression); "
          "7,850 params on 1x28x28")
def logreg(shape: Sequence[int], k: int) -> nn.Sequential:
    c, h, w = image_shape(shape)
    return nn.Sequential(_flatten(), nn.Linear(c * h * w, k))


@register("mlp", summary="784-100-10 ReLU MLP of Hidden Vulnerability 5.1 / A Little Is "
          "Enough 4; 79,510 params on 1x28x28")
def mlp(shape: Sequence[int], k: int) -> nn.Sequential:
    return mlp_layers(shape, [100], k)


@register("mlp-2x128", summary="784-128-128-10 ReLU MLP of Generalized Byzantine-tolerant SGD "
          "(Table 2); 118,282 params on 1x28x28")
def mlp_2x128(shape: Sequence[int], k: int) -> nn.Sequential:
    return mlp_layers(shape, [128, 128], k)


def _pooled(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1 if size >= kernel else 0


@register("cnn-cifar", summary="7-layer CIFAR-10 CNN of Hidden Vulnerability 5.1 / A Little Is "
          "Enough 4 (conv16-pool-conv64-pool-384-192); 977,866 params on 3x32x32")
def cnn_cifar(shape: Sequence[int], k: int) -> nn.Sequential:
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
    c, h, w = image_shape(shape, 9)
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


@register("cnn-generalized", summary="CNN of Generalized Byzantine-tolerant SGD (Table 3): 4 "
          "conv, 2 pools, dropout, FC 512-512; 2,431,018 params on 3x32x32")
def cnn_generalized(shape: Sequence[int], k: int) -> nn.Sequential:
    """Generalized Byzantine-tolerant SGD (Xie et al., 2018), appendix Table 3.

    4 conv 3x3 pad 1 (32, 32, 64, 64 channels, ReLU), max-pool 2 + dropout 0.2 after the
    second and fourth, FC 512 + dropout 0.2, FC 512 + dropout 0.2, output. 2,431,018
    parameters on 3x32x32 input, 1,938,922 on 1x28x28.
    """
    c, h, w = image_shape(shape, 4)
    return nn.Sequential(
        *_conv_stack(c),
        nn.Linear(64 * (h // 4) * (w // 4), 512), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(512, k),
    )


@register("cnn-fall", summary="CNN of Fall of Empires 6.1 (our reading): 4 conv + 1 FC; "
          "106,538 params on 3x32x32")
def cnn_fall(shape: Sequence[int], k: int) -> nn.Sequential:
    """Fall of Empires (Xie et al., 2019), 6.1: "a CNN with 4 convolutional layers followed by
    1 fully connected layer", in MXNet; its appendix table is not in our copy.

    Our reading: the convolutional part of the same authors' MXNet CNN of Generalized
    Byzantine-tolerant SGD (Table 3: 4 conv 3x3 pad 1 with 32, 32, 64, 64 channels, ReLU, 2x2
    max-pool + dropout 0.2 after the second and fourth), followed directly by the one fully
    connected (output) layer. 106,538 parameters on 3x32x32 input, 96,362 on 1x28x28.
    """
    c, h, w = image_shape(shape, 4)
    return nn.Sequential(*_conv_stack(c), nn.Linear(64 * (h // 4) * (w // 4), k))
