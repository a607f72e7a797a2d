"""What a person looks at: accuracy curves over rounds (mean +/- std over seeds) and a
rule x attack heat map of final accuracy. Writes PNG or PDF (by the file suffix)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from byzsgd.results import read_csv, read_json


def find_runs(root: Path) -> list[Path]:
    """Run directories (holding metrics.csv and summary.json) at or under ``root``."""
    if (root / "metrics.csv").exists():
        return [root]
    return sorted(p.parent for p in root.glob("*/metrics.csv"))


def _label(cfg: dict[str, Any]) -> str:
    attack = cfg.get("attack", "none")
    return (f"{cfg['aggregator']} / {attack}" +
            (f" (f={cfg['byzantine']})" if attack != "none" else ""))


def load_curves(runs: list[Path]) -> dict[str, list[list[dict[str, str]]]]:
    """Metrics rows of every run, grouped by label (rule / attack / f), seeds together."""
    groups: dict[str, list[list[dict[str, str]]]] = {}
    for run in runs:
        cfg = read_json(run / "summary.json").get("config", {})
        groups.setdefault(_label(cfg), []).append(read_csv(run / "metrics.csv"))
    return groups


def plot_curves(root: Path, out: Path, metric: str = "test_accuracy") -> Path:
    """Accuracy vs round for every run under ``root``; seeds averaged, shaded +/- std."""
    groups = load_curves(find_runs(root))
    if not groups:
        raise FileNotFoundError(f"no runs (metrics.csv) under {root}")
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, seeds in sorted(groups.items()):
        length = min(len(rows) for rows in seeds)
        rounds = [int(seeds[0][i]["round"]) for i in range(length)]
        values = [[100 * float(rows[i][metric] or "nan") for rows in seeds] for i in range(length)]
        mean = [statistics.fmean(v) for v in values]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        (line,) = ax.plot(rounds, mean, label=label)
        ax.fill_between(rounds, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)],
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel(metric.replace("_", " ") + " (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_heatmap(table: list[dict[str, Any]], out: Path,
                 metric: str = "final_test_accuracy_mean") -> Path:
    """Rule x attack heat map of a sweep table (``aggregator`` and ``attack`` axes)."""
    rules = list(dict.fromkeys(r["aggregator"] for r in table))
    attacks = list(dict.fromkeys(r["attack"] for r in table))
    grid = [[float("nan")] * len(attacks) for _ in rules]
    for r in table:
        grid[rules.index(r["aggregator"])][attacks.index(r["attack"])] = 100 * r[metric]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(attacks), 1.2 + 0.6 * len(rules)))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks)
    ax.set_yticks(range(len(rules)), rules)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "-" if v != v else f"{v:.1f}", ha="center", va="center",
                    color="white" if v != v or v < 60 else "black", fontsize=9)
    fig.colorbar(image, ax=ax, label="final test accuracy (%)")
    ax.set_xlabel("attack")
    ax.set_ylabel("rule")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
