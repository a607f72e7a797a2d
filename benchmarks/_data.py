"""Where the benchmarks find full MNIST (this project's machines keep it in ../shared/data)."""

from __future__ import annotations

from pathlib import Path


def default_data() -> str | None:
    """``../shared/data`` beside the project (or beside the working directory) when it holds
    the MNIST training images, else None (the embedded mnist-5k)."""
    for root in (Path(__file__).resolve().parents[1].parent / "shared" / "data",
                 Path.cwd().parent / "shared" / "data"):
        if any((root / sub / name).is_file() for sub in ("", "mnist")
               for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")):
            return str(root)
    return None
