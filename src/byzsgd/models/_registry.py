"""The model registry: factories by name, and building a model from one, seeded and checked.

A model factory is a function ``(input_shape, num_classes) -> nn.Module``; registered under a
name with :func:`register` (a decorator, applied in the factory's own module: the library's
models register the same way), it is what ``models.build(name, ...)`` and the config field
``model = "name"`` use. :func:`build` makes every model reproducible and checks it before any
training:

* construction runs under torch's global generator forked and seeded from the run's
  generator (which is not advanced by it), so torch's default initialization of every layer
  depends on the run's seed only, and the global random state is left untouched;
* ``init`` then re-initializes: ``"xavier"`` (the papers' rule, the default) draws every
  ``Linear`` / ``Conv{1,2,3}d`` weight Xavier/Glorot-uniform from the generator and zeroes its
  bias, and leaves every other parametrised module (LayerNorm, GroupNorm, BatchNorm,
  Embedding, the user's own) at torch's default initialization; ``"default"`` keeps all of
  torch's (or the factory's own) initialization; a callable ``init(module, generator)``
  does what it says;
* the model is run once on a batch of two zero inputs in evaluation mode: a factory that
  raises, or whose module does not map (batch, *input_shape) to (batch, num_classes), fails
  here with a message that names the model and what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from byzsgd._names import Registry, origin

Factory = Callable[[tuple[int, ...], int], nn.Module]
Init = Callable[[nn.Module, "torch.Generator | None"], None]

#: The module types the ``"xavier"`` rule re-initializes; all others keep torch's default.
XAVIER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
INITS = ("xavier", "default")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory, one-line summary and initialization rule."""

    name: str
    factory: Factory
    summary: str
    init: str | Init = "xavier"

    @property
    def origin(self) -> str:
        """Where the factory is defined (``module.qualname``), for messages and records."""
        return origin(self.factory)


_REGISTRY: Registry[ModelSpec] = Registry("model", "models")
_SPECS = _REGISTRY.specs
#: name -> one-line summary of every registered model (kept in step with the registry).
DESCRIPTIONS = _REGISTRY.descriptions


def register(name: str, *, summary: str, init: str | Init = "xavier",
             replace: bool = False) -> Callable[[Factory], Factory]:
    """Register the decorated factory ``(input_shape, num_classes) -> nn.Module`` as model
    ``name``; returns the factory unchanged.

    ``input_shape`` is the shape of one example (``(C, H, W)`` for images, ``(d,)`` for
    tabular rows, ``(T, d)`` for sequences); the module maps a batch (B, *input_shape) to
    logits (B, num_classes). ``init`` is ``"xavier"``, ``"default"`` or a callable (see the
    module docstring). A name already registered raises ``ValueError`` naming its
    registrant, unless ``replace=True``.

    Example::

        from byzsgd import models

        @models.register("tab-mlp", summary="20-64-k MLP with LayerNorm")
        def tab_mlp(input_shape, num_classes):
            return nn.Sequential(nn.Linear(input_shape[0], 64), nn.LayerNorm(64), nn.ReLU(),
                                 nn.Linear(64, num_classes))
    """
    _REGISTRY.check_entry(name, summary)
    if not (callable(init) or init in INITS):
        raise ValueError(f"models.register({name!r}): init must be one of "
                         f"{', '.join(INITS)} or a callable (module, generator), got {init!r}")

    def decorate(factory: Factory) -> Factory:
        _REGISTRY.check_callable(name, factory, "factory (input_shape, num_classes) -> "
                                 "nn.Module")
        _REGISTRY.add(ModelSpec(name, factory, summary, init), replace=replace)
        return factory

    return decorate


def names() -> list[str]:
    """The names :func:`build` accepts, in registration order."""
    return _REGISTRY.names()


def spec(name: str) -> ModelSpec:
    """The registration of model ``name``."""
    return _REGISTRY.spec(name)


def describe(name: str) -> str:
    """A one-line description of model ``name``."""
    return _REGISTRY.describe(name)


class Classifier(nn.Module):
    """A registered model's module (``layers``) applied to examples of one fixed shape.

    The input's trailing dimensions must be ``input_shape``; one unbatched example (exactly
    ``input_shape``) is run as a batch of one, so that layers that need a batch (BatchNorm)
    work under per-example :func:`torch.func.vmap` too.
    """

    def __init__(self, name: str, input_shape: tuple[int, ...], num_classes: int,
                 layers: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        # Shapes are static under vmap/functional_call, so this check costs nothing there.
        k = len(self.input_shape)
        if x.dim() < k or tuple(x.shape[-k:]) != self.input_shape:
            what = "images of shape" if k == 3 else "inputs of shape"
            layout = " (input (..., C, H, W))" if k == 3 else ""
            raise ValueError(f"{self.name}: built for {what} {self.input_shape}{layout}, "
                             f"got input of shape {tuple(x.shape)}")
        if x.dim() == k and _needs_batch(self.layers):
            return self.layers(x.unsqueeze(0)).squeeze(0)
        return self.layers(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_shape={self.input_shape}"


def _needs_batch(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._NormBase) for m in module.modules())


def _check_arguments(name: str, input_shape: Sequence[int], num_classes: int
                     ) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                            for s in shape):
        raise ValueError(f"{name}: input_shape must be one or more positive integers (the "
                         f"shape of one example), got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{name}: num_classes must be an integer >= 2, got {num_classes!r}")
    return shape


def _peek_seed(generator: torch.Generator | None) -> int:
    # A seed drawn from a copy of the generator's state: a function of the run's seed that
    # does not advance the generator (so the Xavier draws below stay those of before).
    peek = torch.Generator()
    peek.set_state(generator.get_state() if generator is not None else torch.get_rng_state())
    return int(torch.randint(0, 2**62, (1,), generator=peek))


@torch.no_grad()
def _initialize(model: nn.Module, generator: torch.Generator | None) -> None:
    """The papers' rule (Hidden Vulnerability 5.1, "the Xavier weight initialization
    algorithm"): Xavier-uniform weights and zero biases for every ``Linear`` and
    ``Conv{1,2,3}d``, drawn from ``generator`` in module order. Other parametrised modules keep
    the initialization they were built with (torch's default, seeded by :func:`build`)."""
    for module in model.modules():
        if not isinstance(module, XAVIER_TYPES):
            continue
        nn.init.xavier_uniform_(module.weight, generator=generator)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build(name: str, input_shape: Sequence[int], num_classes: int, *,
          generator: torch.Generator | None = None) -> Classifier:
    """Build model ``name`` for examples of shape ``input_shape`` and ``num_classes`` classes.

    Initialized as registered (see the module docstring) from ``generator`` (the global
    random state when ``None``). Raises ``ValueError`` for an unknown name, a shape the model
    cannot take, a factory that fails or a module whose output is not (batch, num_classes).
    """
    s = spec(name)
    shape = _check_arguments(name, input_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_peek_seed(generator))
        try:
            layers = s.factory(shape, num_classes)
        except ValueError as e:  # the factory's own check of its arguments
            raise ValueError(f"{name}: {e}") from None
        except Exception as e:
            raise ValueError(f"model {name!r}: its factory {s.origin} raised "
                             f"{type(e).__name__}: {e} when called with input_shape={shape}, "
                             f"num_classes={num_classes}; fix the factory or use a data set "
                             f"whose examples it accepts") from e
    if not isinstance(layers, nn.Module):
        raise ValueError(f"model {name!r}: its factory {s.origin} returned "
                         f"{type(layers).__name__}, not an nn.Module")
    model = Classifier(name, shape, num_classes, layers)
    if s.init == "xavier":
        _initialize(model, generator)
    elif callable(s.init):
        with torch.no_grad():
            s.init(model, generator)
    _check_output(model, s, shape, num_classes)
    return model


def _check_output(model: Classifier, s: ModelSpec, shape: tuple[int, ...],
                  num_classes: int) -> None:
    was_training = model.training
    model.eval()  # no batch statistics, no dropout: the check changes nothing
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except Exception as e:
        raise ValueError(f"model {s.name!r} ({s.origin}) fails on a batch of 2 inputs of "
                         f"shape {shape}: {type(e).__name__}: {e}; make it accept inputs "
                         f"(batch, *{shape})") from e
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model {s.name!r} ({s.origin}) returns {got} for a batch of 2 "
                         f"inputs of shape {shape}; it must return logits of shape (batch, "
                         f"num_classes) = (2, {num_classes}): make its last layer output "
                         f"num_classes values per example")
    if not out.is_floating_point():
        raise ValueError(f"model {s.name!r} ({s.origin}) returns {out.dtype} logits; it must "
                         f"return floating-point logits")


def num_parameters(model: nn.Module) -> int:
    """The number of scalar parameters d of ``model``."""
    return sum(p.numel() for p in model.parameters())
