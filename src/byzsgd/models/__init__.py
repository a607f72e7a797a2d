"""Models by name: the papers' networks, a CIFAR ResNet-20, and the user's own.

``build(name, input_shape, num_classes, generator=g)`` returns a :class:`Classifier`
initialized from ``g`` only (the global random state is neither used nor advanced), so the
same seed always gives the same model; see :mod:`byzsgd.models._registry`. A user adds a
model with the :func:`register` decorator in their own module::

    from torch import nn
    from byzsgd import models

    @models.register("tab-mlp", summary="d-64-k MLP with LayerNorm")
    def tab_mlp(input_shape, num_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 64), nn.LayerNorm(64), nn.ReLU(),
                             nn.Linear(64, num_classes))

The library's models register the same way: :mod:`.paper` (the four papers' networks) and
:mod:`.resnet` (ResNet-20).
"""

from byzsgd.models import paper, resnet
from byzsgd.models._registry import (
    DESCRIPTIONS,
    INITS,
    Classifier,
    ModelSpec,
    _initialize,  # noqa: F401  (the initialization rule, for tests and tools)
    build,
    describe,
    names,
    num_parameters,
    register,
    spec,
)

__all__ = [
    "DESCRIPTIONS",
    "INITS",
    "Classifier",
    "ModelSpec",
    "build",
    "describe",
    "names",
    "num_parameters",
    "paper",
    "register",
    "resnet",
    "spec",
]
