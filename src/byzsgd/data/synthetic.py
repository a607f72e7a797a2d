"""``synthetic``: a small, seeded, learnable data set for tests (generated in ~20 ms).

Ten class clusters in the MNIST image shape (1, 28, 28), so that every MNIST model applies.
Like MNIST digits, each class's mean image is mostly dark with a sparse set of bright pixels
(a random ``ON`` fraction of the pixels at intensity ``BRIGHT``); an example is its class mean
plus ``NOISE`` times standard normal noise, clipped to [0, 1]. Dark backgrounds keep the
problem as well conditioned as MNIST (a bright common offset on every pixel would force tiny
learning rates), so the MNIST models learn it with MNIST's learning rates (0.1 and up) in a
few dozen rounds, yet not at once, so that an attack's damage remains visible. Labels are balanced
(``i % num_classes``) and shuffled.
"""

from __future__ import annotations

import torch

from byzsgd.data._dataset import Dataset
from byzsgd.data._registry import register

ON = 0.1
BRIGHT = 0.5
NOISE = 1.0


def load(seed: int = 0, *, n_train: int = 2000, n_test: int = 500, num_classes: int = 10,
         input_shape: tuple[int, int, int] = (1, 28, 28)) -> Dataset:
    """Generate the data set; the same arguments always give the same tensors."""
    if n_train < num_classes or n_test < 1:
        raise ValueError(f"synthetic: need n_train >= num_classes ({num_classes}) and "
                         f"n_test >= 1, got n_train={n_train}, n_test={n_test}")
    if num_classes < 2:
        raise ValueError(f"synthetic: num_classes must be >= 2, got {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    dim = input_shape[0] * input_shape[1] * input_shape[2]
    means = BRIGHT * (torch.rand(num_classes, dim, generator=generator) < ON).float()

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
        noise = torch.randn(n, dim, generator=generator)
        images = (means[labels] + NOISE * noise).clamp_(0.0, 1.0)
        return images.view(n, *input_shape), labels

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return Dataset(name="synthetic", x_train=x_train, y_train=y_train, x_test=x_test,
                   y_test=y_test, num_classes=num_classes)


@register("synthetic", summary="10 seeded Gaussian clusters shaped 1x28x28, 2,000 train / 500 "
          "test; for fast tests")
def load_registered(data_dir: object, download: bool) -> Dataset:
    """The registry's loader: the default arguments, no files."""
    return load()
