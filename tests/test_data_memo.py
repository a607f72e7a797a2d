"""The process-local cache of loaded data sets and of the sparse encoding of their training
inputs (byzsgd.data._memo, SparseRows.of): what makes a sweep worker's later runs cheap. A
cached load must be the same data, stale never, unwritten by runs, and a run in a process
with a warm cache must give the same floats as one in a fresh process."""

from __future__ import annotations

import csv
import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from byzsgd import data
from byzsgd.config import ExperimentConfig
from byzsgd.data import _memo, mnist
from byzsgd.engine.sparse import SparseRows
from byzsgd.experiment import run, run_points
from byzsgd.grid import Point

THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    _memo.clear()
    yield
    _memo.clear()


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + \
        struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(directory: Path, n_train: int = 300, n_test: int = 100, seed: int = 0
                ) -> dict[str, np.ndarray]:
    """MNIST-named IDX files of digits-like images: ~10% of the pixels lit (so the engine
    encodes them as sparse rows), labels 0-9."""
    rng = np.random.default_rng(seed)

    def images(n: int) -> np.ndarray:
        lit = rng.random((n, 28, 28)) < 0.1
        return np.where(lit, rng.integers(1, 256, (n, 28, 28)), 0).astype(np.uint8)

    arrays = {"x_train": images(n_train), "y_train": rng.integers(0, 10, n_train, np.uint8),
              "x_test": images(n_test), "y_test": rng.integers(0, 10, n_test, np.uint8)}
    directory.mkdir(parents=True, exist_ok=True)
    for role, stem in mnist.FILES.items():
        (directory / f"{stem}.gz").write_bytes(gzip.compress(_idx(arrays[role])))
    return arrays


def _same(a: data.Dataset, b: data.Dataset) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k))
               for k in ("x_train", "y_train", "x_test", "y_test"))


def test_a_second_load_is_a_hit_with_the_same_data(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path)
    first = data.load("mnist", tmp_path)
    second = data.load("mnist", tmp_path)
    assert (_memo.stats.misses, _memo.stats.hits) == (1, 1)
    assert second is first
    assert torch.equal(second.y_train, torch.from_numpy(arrays["y_train"].astype(np.int64)))
    assert torch.equal(second.x_test[:, 0] * 255,
                       torch.from_numpy(arrays["x_test"]).to(torch.float32))
    _memo.clear()
    assert _same(data.load("mnist", tmp_path), first)  # a fresh load: equal data
    assert _memo.stats.misses == 1


def test_a_changed_file_is_loaded_again(tmp_path: Path) -> None:
    write_mnist(tmp_path, seed=1)
    before = data.load("mnist", tmp_path)
    arrays = write_mnist(tmp_path, seed=2)  # same sizes of arrays, new content and mtime
    stem = mnist.FILES["y_train"]
    path = tmp_path / f"{stem}.gz"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a coarse clock
    after = data.load("mnist", tmp_path)
    assert _memo.stats.misses == 2
    assert torch.equal(after.y_train, torch.from_numpy(arrays["y_train"].astype(np.int64)))
    assert not torch.equal(after.y_train, before.y_train)


def test_another_data_dir_is_another_entry_and_the_cache_is_bounded(tmp_path: Path) -> None:
    for i in range(_memo.SIZE + 1):
        write_mnist(tmp_path / str(i), n_train=20, n_test=10, seed=i)
        data.load("mnist", tmp_path / str(i))
    assert _memo.stats.misses == _memo.SIZE + 1
    assert len(_memo._entries) == _memo.SIZE
    data.load("mnist", tmp_path / "0")  # the oldest was dropped
    assert _memo.stats.misses == _memo.SIZE + 2


def test_a_written_tensor_is_never_served_again(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    first = data.load("mnist", tmp_path)
    clean = first.x_train.clone()
    first.x_train[0].add_(1.0)  # a run writing into a view of the cached inputs
    second = data.load("mnist", tmp_path)
    assert second is not first and _memo.stats.written == 1
    assert torch.equal(second.x_train, clean)


def _config(data_dir: Path, **kw: object) -> ExperimentConfig:
    values = dict(dataset="mnist", data_dir=str(data_dir), model="logreg", workers=7,
                  byzantine=1, rounds=4, batch_size=8, lr=0.1, worker_momentum=0.9,
                  eval_every=2, eval_train_samples=50, aggregator="median",
                  attack="label-flip", partition="dirichlet", seed=3)
    return ExperimentConfig(**{**values, **kw})


@pytest.mark.parametrize("attack", ["none", "sign-flip", "label-flip", "alie", "ipm", "mimic",
                                    "min-max", "min-sum", "gaussian", "omniscient"])
def test_runs_do_not_write_the_cached_data(tmp_path: Path, attack: str) -> None:
    write_mnist(tmp_path / "d")
    ds = data.load("mnist", tmp_path / "d")
    versions = _memo._versions(ds)
    copies = [t.clone() for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)]
    sparse = SparseRows.of(ds.x_train)
    assert sparse is not None
    sparse_copy = sparse.values.copy()
    run(_config(tmp_path / "d", attack=attack), tmp_path / "run")
    assert _memo._versions(ds) == versions
    assert all(torch.equal(c, t) for c, t in
               zip(copies, (ds.x_train, ds.y_train, ds.x_test, ds.y_test), strict=True))
    assert data.load("mnist", tmp_path / "d") is ds  # still served: a hit
    assert SparseRows.of(ds.x_train) is sparse  # the run used (and kept) this encoding
    assert np.array_equal(sparse.values, sparse_copy)


def test_the_sparse_encoding_is_computed_once_read_only_and_redone_after_a_write() -> None:
    x = torch.zeros(50, 1, 4, 4)
    x[:, 0, 1, 2] = torch.arange(50, dtype=torch.float32)
    first = SparseRows.of(x)
    assert first is not None and SparseRows.of(x) is first
    fresh = SparseRows.from_dense(x)
    for name in ("indptr", "indices", "values"):
        assert np.array_equal(getattr(first, name), getattr(fresh, name))
        with pytest.raises(ValueError, match="read-only"):
            getattr(first, name)[0] = 1
    assert SparseRows.of(x.clone()) is not first  # another tensor, another encoding
    x[3, 0, 0, 0] = 7.0
    again = SparseRows.of(x)
    assert again is not first and again.values.size == first.values.size + 1


def _outputs(out: Path) -> dict[str, object]:
    """A run's results that do not depend on timing: its CSVs (less the rounds/s column), its
    summary (less the timings) and its final parameters, exactly."""
    tables = {}
    for name in ("metrics.csv", "rounds.csv"):
        with open(out / name, newline="") as fh:
            tables[name] = [{k: v for k, v in row.items() if k != "rounds_per_s"}
                            for row in csv.DictReader(fh)]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("train_seconds", "rounds_per_s"):
        summary.pop(key, None)
    theta = torch.load(out / "checkpoint.pt", weights_only=False)["theta"]
    return {**tables, "summary": summary, "theta": theta.numpy().tobytes().hex()}


_COLD = """
import json
import sys
from byzsgd.config import ExperimentConfig
from byzsgd.experiment import run
run(ExperimentConfig.from_dict(json.load(open(sys.argv[1]))), sys.argv[2])
"""


def test_a_run_with_a_warm_cache_is_bit_identical_to_one_in_a_fresh_process(
        tmp_path: Path) -> None:
    write_mnist(tmp_path / "d")
    config = _config(tmp_path / "d", aggregator="centered-clipping", attack="alie")
    run(_config(tmp_path / "d", seed=0, aggregator="krum"), tmp_path / "first")  # warms
    assert _memo.stats.misses == 1
    run(config, tmp_path / "warm")
    assert _memo.stats.hits >= 1
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    subprocess.run([sys.executable, "-c", _COLD, str(tmp_path / "config.json"),
                    str(tmp_path / "cold")], check=True, env={**os.environ})
    assert _outputs(tmp_path / "warm") == _outputs(tmp_path / "cold")


def test_a_sweep_pool_of_two_processes_gives_the_floats_of_cold_runs(tmp_path: Path) -> None:
    """``run_points(jobs=2)``: each spawned process runs several runs (its later ones on the
    data it cached), and every run's results equal those of the run made alone on a cold
    cache."""
    write_mnist(tmp_path / "d")
    configs = [_config(tmp_path / "d", aggregator=a, attack=k, seed=s)
               for a, k, s in [("median", "alie", 0), ("krum", "label-flip", 1),
                               ("centered-clipping", "sign-flip", 2), ("mean", "none", 0),
                               ("trimmed-mean", "ipm", 1), ("median", "mimic", 2)]]
    points = [Point(f"run{i}", "", c) for i, c in enumerate(configs)]
    assert run_points(points, tmp_path / "pool", jobs=2, quiet=True, threads=1) == 6
    torch.set_num_threads(1)
    try:
        for i, c in enumerate(configs):
            _memo.clear()
            run(c, tmp_path / "alone" / f"run{i}")
            assert _outputs(tmp_path / "pool" / f"run{i}") == \
                _outputs(tmp_path / "alone" / f"run{i}"), c
    finally:
        torch.set_num_threads(THREADS)

