"""The in-memory data set type shared by every loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set held in memory as tensors.

    Features are float32 of shape (N, *example_shape): images (N, C, H, W) (four dimensions
    are read as images), tabular rows (N, d), sequences (N, T, d), or any other shape. The
    library's images have pixel values in [0, 1]: raw intensities divided by 255 and *not*
    standardized, so that "maximal intensity" (the backdoor pattern of A Little Is Enough,
    4.2) is exactly 1.0 for every data set. Labels are int64 in ``[0, num_classes)``.
    Build one from a user's tensors or arrays with :meth:`from_tensors`.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    #: Per channel, the value of a pixel at maximal intensity (1.0 for raw images, one value
    #: for all channels; see ``standardized``). Images only.
    max_intensity: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        # Loaders build these from files; checking here turns a malformed file into an error
        # at load time instead of a shape error deep inside training.
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"data set {self.name!r}: num_classes must be an integer >= 2, "
                             f"got {k!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.dim() < 2:
                raise ValueError(f"data set {self.name!r}: x_{split} must be a float32 tensor "
                                 f"of shape (N, *example_shape), got {_describe(x)} (convert "
                                 f"with Dataset.from_tensors)")
            if (not isinstance(y, Tensor) or y.dtype != torch.int64 or y.dim() != 1
                    or y.shape[0] != x.shape[0]):
                raise ValueError(f"data set {self.name!r}: y_{split} must be int64 of shape "
                                 f"({x.shape[0]},), one label per example of x_{split}, got "
                                 f"{_describe(y)}")
            if x.shape[0] == 0:
                raise ValueError(f"data set {self.name!r}: x_{split} has no examples")
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= k:
                raise ValueError(
                    f"data set {self.name!r}: y_{split} has labels outside [0, {k}) (its "
                    f"labels run from {low} to {high}), so they do not match its {k} classes:"
                    f" {_label_fix(low, high, k)}")
            if not x.is_contiguous():  # minibatches are gathered from a flat view
                object.__setattr__(self, f"x_{split}", x.contiguous())
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"data set {self.name!r}: train examples are "
                             f"{tuple(self.x_train.shape[1:])} but test examples are "
                             f"{tuple(self.x_test.shape[1:])}")

    @classmethod
    def from_tensors(cls, x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
                     num_classes: int | None = None, name: str = "tensors") -> Dataset:
        """A data set from a user's features and labels (tensors or numpy arrays).

        Features may have any shape (N, *example_shape): tabular (N, d), images
        (N, C, H, W), sequences (N, T, d); any real dtype, converted to float32 (no
        rescaling). Labels must be integers in [0, num_classes); ``num_classes`` defaults to
        the largest label + 1 (over both splits). Raises ``ValueError`` naming the data set
        and what to change otherwise.
        """
        tensors = {}
        for key, value in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test),
                           ("y_test", y_test)):
            t = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
            tensors[key] = t.detach().cpu()
        for split in ("train", "test"):
            x, y = tensors[f"x_{split}"], tensors[f"y_{split}"]
            if x.dtype == torch.bool or x.is_complex():
                raise ValueError(f"data set {name!r}: x_{split} must hold real numbers, got "
                                 f"{x.dtype}")
            if x.dim() < 2:
                raise ValueError(f"data set {name!r}: x_{split} must have shape "
                                 f"(N, *example_shape), e.g. (N, d) for tabular rows, got "
                                 f"{tuple(x.shape)} (reshape a single feature to (N, 1))")
            if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
                raise ValueError(f"data set {name!r}: y_{split} must hold integer class "
                                 f"indices, got {y.dtype} (convert class indices with "
                                 f".long(); map other labels to 0..K-1 first)")
            if y.dim() == 2 and y.shape[1] == 1:  # a column of labels
                y = y.reshape(-1)
            tensors[f"x_{split}"] = x.to(torch.float32).contiguous()
            tensors[f"y_{split}"] = y.to(torch.int64)
        if num_classes is None:
            labels = torch.cat([tensors["y_train"].reshape(-1), tensors["y_test"].reshape(-1)])
            num_classes = int(labels.max()) + 1 if labels.numel() else 0
        return cls(name=name, num_classes=num_classes, **tensors)

    @property
    def is_image(self) -> bool:
        """Whether the examples are images (C, H, W): the features are four-dimensional."""
        return self.x_train.dim() == 4

    def require_images(self, what: str) -> None:
        """Raise ``ValueError`` naming ``what`` unless the examples are images (C, H, W)."""
        if not self.is_image:
            raise ValueError(f"{what} needs image data (N, C, H, W), but data set "
                             f"{self.name!r} has examples of shape {self.input_shape}")

    @classmethod
    def from_arrays(cls, name: str, arrays: dict[str, np.ndarray], num_classes: int
                    ) -> Dataset:
        """From uint8 images and integer labels under the keys ``x_train``, ``y_train``,
        ``x_test``, ``y_test`` (what every loader's parser returns)."""
        return cls(name=name,
                   x_train=images_to_tensor(arrays["x_train"]),
                   y_train=labels_to_tensor(arrays["y_train"]),
                   x_test=images_to_tensor(arrays["x_test"]),
                   y_test=labels_to_tensor(arrays["y_test"]),
                   num_classes=num_classes)

    def standardized(self) -> Dataset:
        """The same data minus the training images' per-channel mean, divided by their
        per-channel standard deviation (MNIST: 0.1307 and 0.3081), the usual input
        normalization of the papers' training code. ``max_intensity`` follows (2.82 for
        MNIST), so that a backdoor pattern "at maximal intensity" keeps its meaning.
        Examples other than images are standardized per feature (their last dimension)."""
        if not self.is_image:
            dims = tuple(range(self.x_train.dim() - 1))
            mean = self.x_train.mean(dim=dims, keepdim=True)
            std = self.x_train.std(dim=dims, keepdim=True).clamp(min=1e-12)
            return Dataset(name=self.name, x_train=(self.x_train - mean) / std,
                           y_train=self.y_train, x_test=(self.x_test - mean) / std,
                           y_test=self.y_test, num_classes=self.num_classes,
                           max_intensity=self.max_intensity)
        dims = (0, 2, 3)
        mean = self.x_train.mean(dim=dims, keepdim=True)
        std = self.x_train.std(dim=dims, keepdim=True).clamp(min=1e-12)
        top = torch.tensor(self.max_intensity).view(1, -1, 1, 1)
        return Dataset(name=self.name, x_train=(self.x_train - mean) / std,
                       y_train=self.y_train, x_test=(self.x_test - mean) / std,
                       y_test=self.y_test, num_classes=self.num_classes,
                       max_intensity=tuple(((top - mean) / std).flatten().tolist()))

    def pattern_value(self) -> Tensor:
        """``max_intensity`` shaped (C, 1, 1) to broadcast over images (C, H, W)."""
        self.require_images("a backdoor pattern at maximal intensity")
        return torch.tensor(self.max_intensity, dtype=self.x_train.dtype,
                            device=self.x_train.device).view(-1, 1, 1)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W) for images, (d,) for tabular rows, ..."""
        return tuple(int(s) for s in self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, "
                f"test={self.x_test.shape[0]}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes})")


def images_to_tensor(pixels: np.ndarray) -> Tensor:
    """uint8 images of shape (N, C, H, W) to float32 in [0, 1]."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise ValueError(f"expected uint8 images of shape (N, C, H, W), "
                         f"got {pixels.dtype} of shape {pixels.shape}")
    return torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32).div_(255.0)


def labels_to_tensor(labels: np.ndarray) -> Tensor:
    """Integer labels of shape (N,) to int64."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected integer labels of shape (N,), "
                         f"got {labels.dtype} of shape {labels.shape}")
    return torch.from_numpy(labels.astype(np.int64))


def _describe(t: object) -> str:
    if isinstance(t, Tensor):
        return f"{t.dtype} of shape {tuple(t.shape)}"
    return type(t).__name__


def _label_fix(low: int, high: int, k: int) -> str:
    if low < 0:
        return f"map the labels to 0..{k - 1} (class indices start at 0)"
    return (f"pass num_classes={high + 1} (or more) if there are {high + 1} classes, or map "
            f"the labels to 0..{k - 1}")
