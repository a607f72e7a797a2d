"""Models with buffers and normalization layers in the per-worker gradient computation
(FlatModel: BatchNorm on each worker's own batch statistics, the server's running statistics
recomputed from theta), a user's own model and tabular data through a whole run, and the
own-loop helpers (byzsgd.per_worker_gradients, flatten_like, unflatten, write_grad)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import byzsgd
from byzsgd import data, models
from byzsgd.config import ExperimentConfig
from byzsgd.engine.flatmodel import FlatModel
from byzsgd.engine.simulator import Simulation, build
from byzsgd.experiment import run
from byzsgd.results import read_csv
from byzsgd.seeding import seed_round_dropout

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def one_thread():
    # Small convolutions on a loaded 2-core machine: one thread avoids OpenMP barrier stalls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scratch():
    """Model and data set names a test registers, removed afterwards."""
    names: list[str] = []
    yield names
    from byzsgd.data import _registry as data_registry
    from byzsgd.models import _registry as model_registry

    for registry in (data_registry, model_registry):
        for name in names:
            registry._SPECS.pop(name, None)
            registry.DESCRIPTIONS.pop(name, None)


def _replica_gradients(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each worker's gradient from its own copy of the module, in training mode: what n
    separate machines compute."""
    rows = []
    for w in range(x.shape[0]):
        replica = copy.deepcopy(module).train()
        F.cross_entropy(replica(x[w]), y[w]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in replica.parameters()]))
    return torch.stack(rows)


def _buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: b.clone() for k, b in module.named_buffers()}


def _bn_mlp(d: int = 6, k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, k))


NORMED = {
    "batchnorm": _bn_mlp,
    "layernorm": lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(),
                                       nn.Linear(8, 3)),
    "groupnorm": lambda: nn.Sequential(nn.Unflatten(-1, (2, 3)), nn.Conv1d(2, 4, 2),
                                       nn.GroupNorm(2, 4), nn.Flatten(-2), nn.Linear(8, 3)),
}


@pytest.mark.parametrize("kind", sorted(NORMED))
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_normalization_layers_give_each_worker_its_own_gradient(kind: str, method: str) -> None:
    module = NORMED[kind]()
    flat = FlatModel(module, method=method)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 6, generator=g) * torch.arange(1, 5).view(4, 1, 1)
    y = torch.randint(0, 3, (4, 5), generator=g)
    before = _buffers(module)
    grads = flat.worker_gradients(flat.initial(), x, y)
    torch.testing.assert_close(grads, _replica_gradients(module, x, y), rtol=1e-4, atol=1e-6)
    # the workers' forward passes never write the server's buffers
    assert all(torch.equal(before[k], b) for k, b in module.named_buffers())
    out = torch.full((4, flat.d), float("nan"))
    flat.worker_gradients(flat.initial(), x, y, out=out)
    torch.testing.assert_close(out, grads)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_batchnorm_uses_each_workers_own_batch_statistics(method: str) -> None:
    """Worker 1's inputs are worker 0's shifted by a constant, labels and parameters equal.
    Normalized with its own batch's statistics, each worker's BatchNorm subtracts the shift
    and the two gradients are equal; statistics pooled over the workers would not cancel it,
    and without BatchNorm the gradients differ."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 5, 6, generator=g)
    x = torch.cat([x0, x0 + 3.0])
    y = torch.randint(0, 3, (1, 5), generator=g).expand(2, 5)
    flat = FlatModel(_bn_mlp(), method=method)
    grads = flat.worker_gradients(flat.initial(), x, y)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    bias = slice(48, 56)  # the first Linear's bias: BatchNorm's mean absorbs it
    torch.testing.assert_close(grads[:, bias], torch.zeros(2, 8), rtol=0, atol=1e-6)
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    ungated = FlatModel(plain, method=method).worker_gradients(byzsgd.flatten_like(plain), x, y)
    assert not torch.allclose(ungated[0], ungated[1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_dropout_draws_per_worker_masks_from_the_seeded_round(method: str) -> None:
    module = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    flat = FlatModel(module, method=method)
    x = torch.randn(1, 5, 6).expand(3, 5, 6)  # the same batch for every worker
    y = torch.zeros(3, 5, dtype=torch.long)
    seed_round_dropout(7, 0)
    a = flat.worker_gradients(flat.initial(), x, y)
    seed_round_dropout(7, 0)
    b = flat.worker_gradients(flat.initial(), x, y)
    seed_round_dropout(7, 1)
    c = flat.worker_gradients(flat.initial(), x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # different masks, same data and parameters


def test_resnet20_gradients_agree_between_vmap_and_loop_and_replicas() -> None:
    module = models.build("resnet20", (3, 32, 32), 10, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (2, 3), generator=g)
    before = _buffers(module)
    loop = FlatModel(module)
    assert loop.method == "loop" and loop.d == 269_722
    vmapped = FlatModel(module, method="vmap")
    theta = loop.initial()
    a = loop.worker_gradients(theta, x, y)
    b = vmapped.worker_gradients(theta, x, y)
    assert torch.isfinite(a).all() and not torch.equal(a[0], a[1])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, _replica_gradients(module, x, y), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in module.named_buffers())


def test_the_server_recomputes_running_statistics_from_theta_and_its_own_data() -> None:
    module = _bn_mlp()
    g = torch.Generator().manual_seed(4)
    calibration = 2 + 3 * torch.randn(50, 6, generator=g)
    flat = FlatModel(module, calibration=calibration)
    theta = flat.initial()
    x = torch.randn(7, 6, generator=g)
    logits = flat.predict(theta, x)
    bn = module[1]
    hidden = F.linear(calibration, module[0].weight, module[0].bias)
    torch.testing.assert_close(bn.running_mean, hidden.mean(0))
    torch.testing.assert_close(bn.running_var, hidden.var(0))
    # what anyone wrote into the buffers since is overwritten: only theta matters
    with torch.no_grad():
        bn.running_mean.fill_(1e6)
        bn.running_var.fill_(1e-6)
    flat._calibrated = None
    torch.testing.assert_close(flat.predict(theta, x), logits)
    # ... and the statistics follow theta
    moved = theta.clone()
    moved[:48] *= 2
    flat.predict(moved, x)
    doubled = F.linear(calibration, 2 * module[0].weight, module[0].bias)
    torch.testing.assert_close(bn.running_mean, doubled.mean(0))
    # evaluation mode: a single example gets the same logits alone as in a batch
    torch.testing.assert_close(flat.predict(theta, x[:1]), logits[:1])
    # without a calibration sample, the inputs being predicted are the sample
    plain = FlatModel(_bn_mlp())
    plain.predict(plain.initial(), calibration)
    hidden = F.linear(calibration, plain.module[0].weight, plain.module[0].bias)
    torch.testing.assert_close(plain.module[1].running_mean, hidden.mean(0))


# ------------------------------------------------------------------ a user's run, end to end


def _register_user_pieces(scratch: list[str]) -> None:
    scratch += ["t-blobs", "t-bn-ln"]

    @data.register("t-blobs", summary="3 blobs in 10 dimensions")
    def blobs(data_dir, download):
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 3, (700,), generator=g)
        x = 3 * torch.randn(3, 10, generator=g)[y] + torch.randn(700, 10, generator=g)
        return data.Dataset.from_tensors(x[:600], y[:600], x[600:], y[600:], name="t-blobs")

    @models.register("t-bn-ln", summary="MLP with BatchNorm, LayerNorm and dropout")
    def bn_ln(shape, k):
        return nn.Sequential(nn.Linear(shape[0], 16), nn.BatchNorm1d(16), nn.ReLU(),
                             nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(0.1),
                             nn.Linear(16, k))


def _config(**changes) -> ExperimentConfig:
    base = dict(dataset="t-blobs", model="t-bn-ln", workers=7, byzantine=1, rounds=16,
                batch_size=8, lr=0.1, eval_every=8, eval_train_samples=200,
                aggregator="median", attack="alie")
    return ExperimentConfig(**{**base, **changes})


def test_a_users_tabular_data_and_batchnorm_model_train_and_resume(tmp_path, scratch) -> None:
    _register_user_pieces(scratch)
    whole = run(_config(), tmp_path / "whole")
    assert whole["final_test_accuracy"] > 0.8
    written = (tmp_path / "whole" / "config.toml").read_text()
    assert 'dataset = "t-blobs"' in written and 'model = "t-bn-ln"' in written

    class Stop(Exception):
        pass

    def interrupt(done, _):
        if done == 11:
            raise Stop

    with pytest.raises(Stop):
        Simulation(build(_config()), tmp_path / "cut").run(progress=interrupt)
    run(_config(), tmp_path / "cut", resume=True)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "rounds_per_s"} for r in rows]  # noqa: E731
    assert drop(read_csv(tmp_path / "cut" / "metrics.csv")) == drop(
        read_csv(tmp_path / "whole" / "metrics.csv"))


def test_a_wrong_model_or_data_set_fails_before_training(tmp_path, scratch) -> None:
    _register_user_pieces(scratch)
    scratch += ["t-wrong", "t-badlabels"]
    models.register("t-wrong", summary="2 outputs")(lambda shape, k: nn.Linear(shape[0], 2))

    @data.register("t-badlabels", summary="labels 1..3")
    def bad(data_dir, download):
        x = torch.randn(30, 4)
        return data.Dataset(name="t-badlabels", x_train=x, y_train=torch.arange(30) % 3 + 1,
                            x_test=x, y_test=torch.arange(30) % 3 + 1, num_classes=3)

    with pytest.raises(ValueError, match=r"model 't-wrong'.*returns \(2, 2\).*\(2, 3\)"):
        build(_config(model="t-wrong"))
    with pytest.raises(ValueError, match=r"'t-badlabels': y_train has labels outside \[0, 3\)"
                                         r".*num_classes=4"):
        build(_config(dataset="t-badlabels"))
    with pytest.raises(ValueError, match=r"backdoor='pattern'.*'t-blobs'"):
        build(_config(backdoor="pattern"))
    assert not (tmp_path / "metrics.csv").exists()


# ------------------------------------------------------------------ a user's own loop


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_per_worker_gradients_match_separate_machines(method: str) -> None:
    module = _bn_mlp().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 6, generator=g)
    y = torch.randint(0, 3, (3, 4), generator=g)
    before = _buffers(module)
    grads = byzsgd.per_worker_gradients(module, F.cross_entropy, x, y, method=method)
    torch.testing.assert_close(grads, _replica_gradients(module, x, y), rtol=1e-4, atol=1e-6)
    assert not module.training  # its mode restored
    assert all(torch.equal(before[k], b) for k, b in module.named_buffers())
    # any loss: a summed squared error on regression targets
    mse = byzsgd.per_worker_gradients(module, lambda out, t: ((out - t) ** 2).sum(), x,
                                      torch.zeros(3, 4, 3), method=method)
    assert mse.shape == grads.shape and not torch.allclose(mse, grads)


def test_flatten_unflatten_and_write_grad_round_trip() -> None:
    module = _bn_mlp()
    theta = byzsgd.flatten_like(module)
    assert theta.shape == (models.num_parameters(module),)
    parts = byzsgd.unflatten(theta, module)
    assert list(parts) == [n for n, _ in module.named_parameters()]
    assert all(torch.equal(parts[n], p) for n, p in module.named_parameters())
    assert torch.equal(byzsgd.flatten_like(module, parts), theta)
    assert torch.equal(byzsgd.flatten_like(module, list(parts.values())), theta)
    vector = torch.arange(theta.numel(), dtype=torch.float32)
    byzsgd.write_grad(module, vector)
    byzsgd.write_grad(module, vector)  # over an existing .grad
    assert torch.equal(torch.cat([p.grad.reshape(-1) for p in module.parameters()]), vector)
    with pytest.raises(ValueError, match=r"d = 99 parameters, got a vector of shape \(5,\)"):
        byzsgd.unflatten(torch.zeros(5), module)
    with pytest.raises(ValueError, match=r"0.weight has shape \(8, 6\), got a tensor of shape"):
        byzsgd.flatten_like(module, [torch.zeros(1), *list(parts.values())[1:]])
    with pytest.raises(ValueError, match=r"no tensor for parameter\(s\) 3.bias"):
        byzsgd.flatten_like(module, {k: v for k, v in parts.items() if k != "3.bias"})
    with pytest.raises(ValueError, match=r"inputs must be \(n, b, ...\)"):
        byzsgd.per_worker_gradients(module, F.cross_entropy, torch.zeros(3, 4, 6),
                                    torch.zeros(2, 4, dtype=torch.long))


def _readme_example(heading: str) -> str:
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, heading
    return blocks[0]


def test_the_readme_examples_run(tmp_path, monkeypatch, scratch) -> None:
    scratch += ["blobs", "bn-mlp"]
    monkeypatch.chdir(tmp_path)
    own: dict = {}
    exec(compile(_readme_example("Your own model and data"), "README", "exec"), own)
    assert own["summary"]["status"] == "complete"
    assert (tmp_path / "runs" / "blobs" / "metrics.csv").exists()
    loop: dict = {}
    exec(compile(_readme_example("Your own training loop"), "README", "exec"), loop)
    model, grads, f = loop["model"], loop["grads"], loop["f"]
    assert grads.shape == (11, models.num_parameters(model))
    # the aggregate went into .grad, and the median ignored the 2 forged rows' direction
    written = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(written, loop["aggregate"])
    assert torch.dot(written, grads[f:].mean(0)) > 0
