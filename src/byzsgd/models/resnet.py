"""ResNet-20 for CIFAR-10 (He et al., "Deep Residual Learning for Image Recognition", CVPR
2016, Section 4.2), the field's standard CIFAR network for Byzantine-robust training.

A 3x3 convolution with 16 filters, then 3 stages of n = 3 basic blocks (two 3x3 convolutions
each, each followed by batch normalization) with 16, 32 and 64 filters on feature maps of
32x32, 16x16 and 8x8 (the first convolution of stages 2 and 3 has stride 2), then global
average pooling and a fully connected layer: 6n + 2 = 20 weighted layers. Shortcuts are
identities; where the shape changes, option A of the paper: subsample by 2 and pad the new
channels with zeros (parameter-free). 269,722 parameters for 10 classes ("0.27M", Table 6).
Weights are initialized as in He et al. (2015), which the paper cites: normal with standard
deviation sqrt(2 / fan_in) for convolutions and the output layer, zero output bias,
BatchNorm scale 1 and shift 0.

Under the simulator every worker normalizes with its own minibatch's statistics; the running
statistics used for evaluation are kept on the server (see :class:`byzsgd.engine.FlatModel`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byzsgd.models._registry import register
from byzsgd.models.paper import image_shape

STAGES = (16, 32, 64)
BLOCKS_PER_STAGE = 3


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (option A) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.extra = c_out - c_in

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.extra == 0:
            return x
        x = x[..., :: self.stride, :: self.stride]
        # zero channels appended after the input's: padding of dim -3 (channels)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016), 4.2, with ``blocks`` basic blocks per stage."""

    def __init__(self, channels: int, num_classes: int, blocks: int = BLOCKS_PER_STAGE
                 ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, STAGES[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(STAGES[0])
        layers: list[nn.Module] = []
        c_in = STAGES[0]
        for stage, c_out in enumerate(STAGES):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(STAGES[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(-2, -1)))


@torch.no_grad()
def he_init(model: nn.Module, generator: torch.Generator | None) -> None:
    """He et al. (2015) normal initialization (fan-in, ReLU gain) of every convolution and
    linear weight, drawn from ``generator`` in module order; zero linear biases; BatchNorm
    keeps scale 1 and shift 0."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@register("resnet20", init=he_init,
          summary="ResNet-20 of He et al. 2016 (4.2) for CIFAR: 3 stages x 3 basic blocks, "
                  "16/32/64 channels, BatchNorm; 269,722 params on 3x32x32")
def resnet20(shape: Sequence[int], k: int) -> ResNet:
    c, _, _ = image_shape(shape)
    return ResNet(c, k)
