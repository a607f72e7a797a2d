"""What a person looks at: accuracy curves over rounds (mean +/- std over seeds) and a
rule x attack heat map of final accuracy. Writes PNG or PDF (by the file suffix)."""

from __future__ import annotations

import statistics
import textwrap
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
    # One colour per rule, one line style per attack: a 4 x 3 grid stays readable.
    rules = list(dict.fromkeys(label.split(" / ")[0] for label in sorted(groups)))
    attacks = list(dict.fromkeys(label.split(" / ")[-1] for label in sorted(groups)))
    styles = ["-", "--", ":", "-."]
    for label, seeds in sorted(groups.items()):
        length = min(len(rows) for rows in seeds)
        rounds = [int(seeds[0][i]["round"]) for i in range(length)]
        values = [[100 * float(rows[i][metric] or "nan") for rows in seeds] for i in range(length)]
        mean = [statistics.fmean(v) for v in values]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        rule, attack = label.split(" / ")[0], label.split(" / ")[-1]
        (line,) = ax.plot(rounds, mean, label=label,
                          color=f"C{rules.index(rule) % 10}",
                          linestyle=styles[attacks.index(attack) % len(styles)])
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
    # The colour scale spans the data (a 0-100 scale makes 80% and 95% look alike).
    finite = [v for row in grid for v in row if v == v]
    low, high = (min(finite), max(finite)) if finite else (0.0, 100.0)
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    std_key = metric.replace("_mean", "_std")
    spread = {(r["aggregator"], r["attack"]): 100 * r[std_key] for r in table
              if std_key in r and int(r.get("seeds", 1)) > 1}
    image = ax.imshow(grid, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks)
    ax.set_yticks(range(len(rules)), rules)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            text = "-" if v != v else f"{v:.1f}"
            if (rules[i], attacks[j]) in spread:
                text += f"\n\u00b1{spread[(rules[i], attacks[j])]:.1f}"
            dark = v != v or (v - low) / (high - low) < 0.6
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if dark else "black", fontsize=9)
    fig.colorbar(image, ax=ax, label="final test accuracy (%)")
    ax.set_xlabel("attack")
    ax.set_ylabel("rule")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _mean_curve(runs: list[Path], metric: str, x: str
                ) -> tuple[list[float], list[float], list[float]]:
    """x values, mean and std over seeds of ``metric`` (in %) for runs of one setting."""
    seeds = [read_csv(run / "metrics.csv") for run in runs]
    length = min(len(rows) for rows in seeds)
    xs = [float(seeds[0][i][x]) for i in range(length)]
    values = [[100 * float(rows[i][metric] or "nan") for rows in seeds] for i in range(length)]
    mean = [statistics.fmean(v) for v in values]
    std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
    return xs, mean, std


def plot_run_groups(groups: dict[str, dict[str, list[Path]]], out: Path,
                    metric: str = "test_accuracy", x: str = "epoch", title: str = "",
                    vline: float | None = None, logy: bool = False) -> Path:
    """Curves of ``metric`` vs ``x`` (a metrics.csv column: epoch or round), one panel per
    key of ``groups`` and one line per label (seeds averaged, shaded +/- std). ``vline``
    marks an x value (e.g. where an attack stops)."""
    panels = list(groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.4, 3.8),
                             squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels, strict=True):
        for label, runs in groups[panel].items():
            xs, mean, std = _mean_curve(runs, metric, x)
            (line,) = ax.plot(xs, mean, label=label, lw=1.3)
            if any(std):
                ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                                [m + s for m, s in zip(mean, std, strict=True)],
                                color=line.get_color(), alpha=0.2)
        if vline is not None:
            ax.axvline(vline, color="grey", ls=":", lw=1)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_title(panel or textwrap.fill(title, 60), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric.replace("_", " ") + " (%)")
    if title and panels != [""]:
        fig.suptitle(textwrap.fill(title, 40 * len(panels) + 20), fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def plot_param(series: dict[str, list[tuple[float, float, float]]], out: Path, *,
               xlabel: str, ylabel: str, scale: float = 100.0, title: str = "",
               logx: bool = False) -> Path:
    """A table metric vs a swept parameter: one line per series of (x, mean, std) points."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in series.items():
        pts = sorted(pts)
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [scale * p[1] for p in pts], yerr=[scale * p[2] for p in pts],
                    label=name, marker="o", ms=4, capsize=3, lw=1.3)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def plot_matrices(panels: dict[str, list[list[tuple[float, float, int]]]], rows: list[str],
                  cols: list[str], out: Path, *, label: str, scale: float = 100.0,
                  title: str = "", xlabel: str = "", ylabel: str = "") -> Path:
    """Heat maps side by side, one per panel, of a rows x cols grid of (mean, std, seeds)
    cells (NaN: no run); a cell shows ``scale * mean`` and, over several seeds, ``± std``. The
    colour scale, shared by the panels, spans the data."""
    finite = [scale * c[0] for grid in panels.values() for row in grid for c in row
              if c[0] == c[0]]
    low, high = (min(finite), max(finite)) if finite else (0.0, 100.0)
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    size = 7 if len(cols) * len(panels) <= 12 else 6.5
    fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                             figsize=(1.2 + (0.95 * len(cols) + 1.6) * len(panels),
                                      1.6 + 0.32 * len(rows)))
    image = None
    for ax, (name, grid) in zip(axes[0], panels.items(), strict=True):
        values = [[scale * c[0] for c in row] for row in grid]
        image = ax.imshow(values, cmap="viridis", vmin=low, vmax=high, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        for i, row in enumerate(grid):
            for j, (mean, std, seeds) in enumerate(row):
                v = scale * mean
                text = "-" if v != v else f"{v:.1f}"
                if v == v and seeds > 1:
                    text += f"\n±{scale * std:.1f}"
                dark = v != v or (v - low) / (high - low) < 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if dark else "black", linespacing=0.9)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel(ylabel)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label=label, fraction=0.03, pad=0.01)
    if title:
        fig.suptitle(textwrap.fill(title, 50 * len(panels) + 20), fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out
