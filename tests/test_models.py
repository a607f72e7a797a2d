"""Models: shapes, parameter counts, deterministic init, torch.func/vmap compatibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from byzsgd import models

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)

# (name, input shape) -> parameter count d. mlp's 79,510 is stated by the papers
# (Hidden Vulnerability 5.1 "d ~ 8e4", A Little Is Enough 4 "almost 80k"); cnn-cifar's
# ~1e6 likewise (Hidden Vulnerability 5.1 "10^6 free parameters").
COUNTS = {
    ("logreg", MNIST): 7_850,
    ("mlp", MNIST): 79_510,
    ("mlp-2x128", MNIST): 118_282,
    ("cnn-cifar", CIFAR): 977_866,
    ("cnn-cifar", MNIST): 707_242,
    ("cnn-generalized", CIFAR): 2_431_018,
    ("cnn-generalized", MNIST): 1_938_922,
    ("cnn-fall", CIFAR): 106_538,
    ("cnn-fall", MNIST): 96_362,
}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


PAPER = ["logreg", "mlp", "mlp-2x128", "cnn-cifar", "cnn-generalized", "cnn-fall"]


def test_names_and_descriptions() -> None:
    assert models.names()[:len(PAPER)] == PAPER
    assert "resnet20" in models.names()
    for name in models.names():
        text = models.describe(name)
        assert text and "\n" not in text
        assert models.DESCRIPTIONS[name] == text


@pytest.mark.parametrize(("name", "shape"), sorted(COUNTS))
def test_parameter_count(name: str, shape: tuple[int, int, int]) -> None:
    model = models.build(name, shape, 10, generator=seeded())
    assert models.num_parameters(model) == COUNTS[(name, shape)]


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_forward_shapes(name: str, shape: tuple[int, int, int]) -> None:
    model = models.build(name, shape, 7, generator=seeded())
    model.eval()
    x = torch.rand(5, *shape)
    out = model(x)
    assert out.shape == (5, 7)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # A single unbatched image gives the same logits as inside a batch.
    torch.testing.assert_close(model(x[2]), out[2], rtol=1e-5, atol=1e-5)


def test_mlp_layers_follow_the_papers() -> None:
    mlp = models.build("mlp", MNIST, 10, generator=seeded())
    linear = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 100), (100, 10)]
    mlp2 = models.build("mlp-2x128", MNIST, 10, generator=seeded())
    linear = [m for m in mlp2.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 128), (128, 128),
                                                                 (128, 10)]


def test_cnn_cifar_feature_sizes() -> None:
    model = models.build("cnn-cifar", CIFAR, 10, generator=seeded())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (16, (3, 3), (1, 1)), (64, (4, 4), (1, 1))]
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(2304, 384), (384, 192),
                                                                 (192, 10)]


def test_init_is_xavier_uniform_with_zero_biases() -> None:
    model = models.build("mlp", MNIST, 10, generator=seeded())
    weight = model.layers[1].weight.detach()
    bound = (6 / (784 + 100)) ** 0.5
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.9 * bound  # spread over the whole interval
    assert float(weight.std()) == pytest.approx(bound / 3**0.5, rel=0.05)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert torch.count_nonzero(module.bias) == 0


@pytest.mark.parametrize("name", models.names())
def test_init_is_deterministic_and_leaves_global_rng_alone(name: str) -> None:
    state = torch.get_rng_state()
    a = models.build(name, CIFAR, 10, generator=seeded(3)).state_dict()
    b = models.build(name, CIFAR, 10, generator=seeded(3)).state_dict()
    c = models.build(name, CIFAR, 10, generator=seeded(4)).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_without_generator_uses_global_rng() -> None:
    torch.manual_seed(11)
    a = models.build("logreg", MNIST, 10).state_dict()
    torch.manual_seed(11)
    b = models.build("logreg", MNIST, 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_papers_models_have_no_buffers_and_no_batchnorm() -> None:
    for name in PAPER:
        model = models.build(name, CIFAR, 10, generator=seeded())
        assert list(model.buffers()) == []
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                       for m in model.modules())


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*mlp"):
        models.build("resnet", MNIST, 10)
    with pytest.raises(ValueError, match="input_shape"):
        models.build("mlp", (28, 28), 10)
    with pytest.raises(ValueError, match="input_shape"):
        models.build("mlp", (1, 0, 28), 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.build("mlp", MNIST, 1)
    with pytest.raises(ValueError, match=r"at least 9x9"):
        models.build("cnn-cifar", (3, 8, 8), 10)
    with pytest.raises(ValueError, match=r"at least 4x4"):
        models.build("cnn-fall", (1, 3, 3), 10)
    with pytest.raises(ValueError, match="unknown model"):
        models.describe("nope")
    model = models.build("mlp", MNIST, 10, generator=seeded())
    with pytest.raises(ValueError, match=r"built for images of shape \(1, 28, 28\)"):
        model(torch.rand(2, 3, 32, 32))


def _loss(model: torch.nn.Module):
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return loss


# One MLP and one CNN at CIFAR shape keep this fast; the structure is shared by the others.
@pytest.mark.parametrize(("name", "shape"), [("mlp", MNIST), ("cnn-cifar", CIFAR),
                                             ("cnn-fall", CIFAR)])
def test_per_worker_gradients_under_vmap_match_a_loop(name: str, shape: tuple) -> None:
    n_workers, batch = 3, 4
    model = models.build(name, shape, 10, generator=seeded())
    model.eval()  # deterministic (dropout off) so the loop can be compared exactly
    # Each worker has its own parameters (a perturbed copy) and its own batch.
    gen = seeded(1)
    params = {k: torch.stack([v.detach() + 0.01 * torch.randn(v.shape, generator=gen)
                              for _ in range(n_workers)])
              for k, v in model.named_parameters()}
    x = torch.rand(n_workers, batch, *shape, generator=gen)
    y = torch.randint(0, 10, (n_workers, batch), generator=gen)
    batched = vmap(grad(_loss(model)))(params, x, y)
    for w in range(n_workers):
        replica = models.build(name, shape, 10, generator=seeded())
        replica.eval()
        replica.load_state_dict({k: v[w] for k, v in params.items()})
        F.cross_entropy(replica(x[w]), y[w]).backward()
        for k, p in replica.named_parameters():
            torch.testing.assert_close(batched[k][w], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "shape"), [("mlp", MNIST), ("cnn-cifar", CIFAR)])
def test_per_example_gradients_under_vmap_match_a_loop(name: str, shape: tuple) -> None:
    model = models.build(name, shape, 10, generator=seeded())
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = seeded(2)
    x = torch.rand(4, *shape, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        # Unbatched example: the models accept (C, H, W) directly.
        return F.cross_entropy(functional_call(model, p, (xi,)), yi)

    per_example = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    for i in range(4):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(per_example[k][i], p.grad, rtol=1e-4, atol=1e-6)


def test_dropout_models_run_under_vmap_with_different_randomness() -> None:
    model = models.build("cnn-generalized", CIFAR, 10, generator=seeded())
    model.train()
    params = {k: v.detach().expand(2, *v.shape) for k, v in model.named_parameters()}
    x = torch.rand(1, 3, *CIFAR).expand(2, 3, *CIFAR)  # same data for both workers
    y = torch.zeros(2, 3, dtype=torch.int64)
    torch.manual_seed(0)
    grads = vmap(grad(_loss(model)), randomness="different")(params, x, y)
    g = grads["layers.13.weight"]
    assert torch.isfinite(g).all()
    # Same parameters and data, different dropout masks: the two gradients differ.
    assert not torch.equal(g[0], g[1])


# ------------------------------------------------------------------------------ registry


@pytest.fixture
def scratch_names():
    """Names registered by a test, removed afterwards so that tests stay independent."""
    added: list[str] = []
    yield added
    from byzsgd.models import _registry

    for name in added:
        _registry._SPECS.pop(name, None)
        _registry.DESCRIPTIONS.pop(name, None)


def _tab(hidden: int = 8):
    def make(shape, k):
        return torch.nn.Sequential(torch.nn.Linear(shape[0], hidden), torch.nn.LayerNorm(hidden),
                                   torch.nn.ReLU(), torch.nn.Linear(hidden, k))
    return make


def test_register_adds_a_buildable_described_model(scratch_names) -> None:
    scratch_names.append("t-tab")
    factory = _tab()
    assert models.register("t-tab", summary="tabular test model")(factory) is factory
    assert "t-tab" in models.names() and models.describe("t-tab") == "tabular test model"
    assert models.DESCRIPTIONS["t-tab"] == "tabular test model"
    model = models.build("t-tab", (5,), 3, generator=seeded())
    assert model(torch.rand(4, 5)).shape == (4, 3)
    assert models.num_parameters(model) == 5 * 8 + 8 + 2 * 8 + 8 * 3 + 3


def test_a_clashing_name_names_its_registrant_unless_replaced(scratch_names) -> None:
    with pytest.raises(ValueError, match=r"'mlp' is already registered by "
                                         r"byzsgd\.models\.paper\.mlp.*replace=True"):
        models.register("mlp", summary="another")(_tab())
    scratch_names.append("t-twice")
    models.register("t-twice", summary="first")(_tab(4))
    models.register("t-twice", summary="second", replace=True)(_tab(6))
    assert models.describe("t-twice") == "second"
    assert models.build("t-twice", (3,), 2).layers[0].out_features == 6
    with pytest.raises(ValueError, match="summary"):
        models.register("t-bad", summary="two\nlines")
    with pytest.raises(ValueError, match="init"):
        models.register("t-bad", summary="x", init="orthogonal")


def test_a_failing_factory_or_a_wrong_output_shape_fails_at_build(scratch_names) -> None:
    scratch_names += ["t-raises", "t-wide", "t-none", "t-scalar"]

    @models.register("t-raises", summary="raises")
    def raises(shape, k):
        raise RuntimeError("boom")

    models.register("t-wide", summary="k + 1 outputs")(
        lambda shape, k: torch.nn.Linear(shape[0], k + 1))
    models.register("t-none", summary="not a module")(lambda shape, k: None)
    models.register("t-scalar", summary="sums everything")(
        lambda shape, k: torch.nn.Sequential(torch.nn.Flatten(0), torch.nn.Linear(2 * shape[0],
                                                                                   k)))
    with pytest.raises(ValueError, match=r"model 't-raises': its factory .*raises raised "
                                         r"RuntimeError: boom .*input_shape=\(4,\)"):
        models.build("t-raises", (4,), 3)
    with pytest.raises(ValueError, match=r"'t-wide'.* returns \(2, 4\) for a batch of 2 .*"
                                         r"\(2, 3\): make its last layer output num_classes"):
        models.build("t-wide", (4,), 3)
    with pytest.raises(ValueError, match=r"'t-none'.*returned NoneType, not an nn.Module"):
        models.build("t-none", (4,), 3)
    with pytest.raises(ValueError, match=r"'t-scalar'.* returns \(3,\)"):
        models.build("t-scalar", (4,), 3)
    with pytest.raises(ValueError, match=r"'t-wide'.*fails on a batch of 2 inputs of shape"
                                         r" \(5, 6\)"):
        models.build("t-wide", (5, 6), 3)


class _Scaled(torch.nn.Module):
    """A user module with its own parameter and no reset_parameters."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _normed(shape, k):
    return torch.nn.Sequential(
        torch.nn.Conv2d(shape[0], 4, 3, padding=1), torch.nn.GroupNorm(2, 4),
        torch.nn.BatchNorm2d(4), torch.nn.Flatten(), _Scaled(4 * shape[1] * shape[2]),
        torch.nn.LayerNorm(4 * shape[1] * shape[2]), torch.nn.Linear(4 * shape[1] * shape[2], k))


def test_unknown_module_types_keep_a_seeded_default_initialization(scratch_names) -> None:
    scratch_names += ["t-normed", "t-embed"]
    models.register("t-normed", summary="norm layers")(_normed)

    @models.register("t-embed", summary="embedding of a rounded first feature")
    def embed(shape, k):
        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb = torch.nn.Embedding(4, k)

            def forward(self, x):
                return self.emb(x[..., 0].long().clamp(0, 3))
        return Net()

    state = torch.get_rng_state()
    a = models.build("t-normed", (2, 3, 3), 3, generator=seeded(1)).state_dict()
    b = models.build("t-normed", (2, 3, 3), 3, generator=seeded(1)).state_dict()
    c = models.build("t-normed", (2, 3, 3), 3, generator=seeded(2)).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # torch's defaults where no rule applies: norm scales 1, shifts 0; the user's randn draws
    assert torch.equal(a["layers.1.weight"], torch.ones(4))
    assert torch.equal(a["layers.2.bias"], torch.zeros(4))
    assert torch.equal(a["layers.5.weight"], torch.ones(36))
    assert not torch.equal(a["layers.4.scale"], c["layers.4.scale"])
    assert a["layers.4.scale"].std() > 0.5
    # ... and the papers' rule where it applies: Xavier weights, zero biases
    assert torch.count_nonzero(a["layers.0.bias"]) == 0
    assert torch.count_nonzero(a["layers.6.bias"]) == 0
    assert not torch.equal(a["layers.6.weight"], c["layers.6.weight"])
    e1 = models.build("t-embed", (2,), 3, generator=seeded(1)).state_dict()["layers.emb.weight"]
    e2 = models.build("t-embed", (2,), 3, generator=seeded(1)).state_dict()["layers.emb.weight"]
    e3 = models.build("t-embed", (2,), 3, generator=seeded(2)).state_dict()["layers.emb.weight"]
    assert torch.equal(e1, e2) and not torch.equal(e1, e3)
    assert float(e1.std()) > 0.3  # torch's N(0, 1), not garbage nor zeros


def test_init_default_keeps_torchs_initialization_of_linear_layers(scratch_names) -> None:
    scratch_names += ["t-xavier", "t-default"]
    models.register("t-xavier", summary="x")(lambda s, k: torch.nn.Linear(s[0], k))
    models.register("t-default", summary="x", init="default")(
        lambda s, k: torch.nn.Linear(s[0], k))
    with torch.no_grad():
        xavier = models.build("t-xavier", (50,), 10, generator=seeded()).layers
        default = models.build("t-default", (50,), 10, generator=seeded()).layers
    assert torch.count_nonzero(xavier.bias) == 0 and torch.count_nonzero(default.bias) == 10
    # torch's default: uniform(+-1/sqrt(fan_in)); Xavier: uniform(+-sqrt(6/(fan_in+fan_out)))
    assert float(default.weight.detach().abs().max()) <= 50 ** -0.5
    assert float(xavier.weight.detach().abs().max()) > 50 ** -0.5


# ------------------------------------------------------------------------------ resnet20


def test_resnet20_follows_he_et_al() -> None:
    model = models.build("resnet20", CIFAR, 10, generator=seeded())
    # He et al. 2016, Table 6: "0.27M" parameters for ResNet-20
    assert models.num_parameters(model) == 269_722
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linear) == 20  # 6n + 2 weighted layers, n = 3
    assert [m.out_channels for m in convs] == [16] * 7 + [32] * 6 + [64] * 6
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 19
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 10)]
    # He et al. 2015 init: std sqrt(2 / fan_in)
    w = convs[10].weight.detach()
    assert float(w.std()) == pytest.approx((2 / (32 * 9)) ** 0.5, rel=0.1)
    model.eval()
    x = torch.rand(2, *CIFAR)
    assert model(x).shape == (2, 10)
    torch.testing.assert_close(model(x[1]), model(x)[1], rtol=1e-4, atol=1e-5)
    assert models.build("resnet20", MNIST, 10).layers.conv.in_channels == 1
