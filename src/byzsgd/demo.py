"""``byzsgd demo``, the main job: the field's two lessons, measured in one small sweep.

1. A crude attack (Gaussian noise, Xie et al., Generalized Byzantine-tolerant SGD 5.2) destroys
   the undefended mean while every robust rule holds.
2. Small, well-crafted attacks (A Little Is Enough, Baruch et al. 2019, at the paper's
   ``z_max(n, f)``; inner-product manipulation, Xie et al., Fall of Empires) degrade the
   robust rules, and Krum selects the Byzantine vector.

The sweep is ``configs/demo.toml``; the table, heat map, curves and a takeaway computed from the
table are written under ``out``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from byzsgd._numba_cache import is_cold
from byzsgd.experiment import SWEEP_TABLE, Sweep, run_points, summarize, write_table
from byzsgd.progress import SweepProgress
from byzsgd.results import read_csv, write_json

#: The numba kernels a demo run calls (Krum's Gram matrix, the median, ALIE's moments, the MLP).
DEMO_KERNELS = ("aggregators/_gram.py", "aggregators/_orderstats.py", "attacks/_moments.py",
                "engine/sparse.py")
#: The undefended rule, and the attack that means "no attack".
UNDEFENDED = "mean"
NO_ATTACK = "none"


def demo_config() -> Path:
    """The packaged demo sweep (``byzsgd/configs/demo.toml``)."""
    return Path(str(resources.files("byzsgd") / "configs" / "demo.toml"))


@dataclass
class DemoResult:
    """The demo's table (one row per rule x attack), its takeaway lines and files."""

    table: list[dict[str, Any]]
    takeaway: list[str]
    files: dict[str, Path]


def selection_rate(run: Path) -> float:
    """The fraction of rounds in which the rule selected a Byzantine vector (metrics.csv
    ``byzantine_selected``, a per-interval mean, weighted by the interval's rounds); NaN for
    rules that select nothing."""
    total = weight = 0.0
    previous = 0
    for r in read_csv(run / "metrics.csv"):
        rounds, previous = int(r["round"]) - previous, int(r["round"])
        value = float(r.get("byzantine_selected") or "nan")
        if rounds > 0 and value == value:
            total += rounds * value
            weight += rounds
    return total / weight if weight else math.nan


def _add_selection(out: Path, sweep: Sweep, table: list[dict[str, Any]]) -> None:
    """Add ``byzantine_selected_mean`` (over seeds) to each row of ``table``."""
    rates: dict[tuple[str, str], list[float]] = {}
    for p in sweep.points():
        key = (p.config.aggregator, p.config.attack)
        rates.setdefault(key, []).append(selection_rate(out / p.name))
    for row in table:
        values = [v for v in rates.get((row["aggregator"], row["attack"]), []) if v == v]
        row["byzantine_selected_mean"] = statistics.fmean(values) if values else math.nan


def _cell(row: dict[str, Any]) -> str:
    mean = 100 * row["final_test_accuracy_mean"]
    if int(row["seeds"]) > 1:
        return f"{mean:5.1f} +/- {100 * row['final_test_accuracy_std']:.1f}"
    return f"{mean:5.1f} (1 seed)"


def format_matrix(table: list[dict[str, Any]]) -> str:
    """Final test accuracy (%) as a rule x attack matrix, mean +/- std over seeds, and the
    rate at which selecting rules picked a Byzantine vector."""
    rules = list(dict.fromkeys(r["aggregator"] for r in table))
    attacks = list(dict.fromkeys(r["attack"] for r in table))
    cells = {(r["aggregator"], r["attack"]): _cell(r) for r in table}
    seeds = max(int(r["seeds"]) for r in table)
    header = [f"final acc % ({seeds} seed{'s' * (seeds > 1)})", *attacks]
    rows = [[rule, *(cells.get((rule, a), "-") for a in attacks)] for rule in rules]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    for r in table:
        rate = r.get("byzantine_selected_mean", math.nan)
        if r["attack"] != NO_ATTACK and rate == rate:
            lines.append(f"{r['aggregator']} selected a Byzantine vector in {100 * rate:.0f}% "
                         f"of rounds under {r['attack']}")
    return "\n".join(lines)


def takeaway(table: list[dict[str, Any]]) -> list[str]:
    """Two or three lines read from ``table``: what the crude attack did to the mean and which
    rules held, which attack hurt the robust rules most, Krum's selection rate, where next."""
    acc = {(r["aggregator"], r["attack"]): 100 * r["final_test_accuracy_mean"] for r in table}
    rules = list(dict.fromkeys(r["aggregator"] for r in table))
    attacks = [a for a in dict.fromkeys(r["attack"] for r in table) if a != NO_ATTACK]
    robust = [r for r in rules if r != UNDEFENDED]
    lines = []
    if UNDEFENDED in rules and attacks and robust:
        crude = min(attacks, key=lambda a: acc.get((UNDEFENDED, a), math.inf))
        worst = min(acc[(r, crude)] for r in robust)
        held = [r for r in robust if acc[(r, crude)] >= acc[(UNDEFENDED, crude)] + 20]
        lines.append(f"Under {crude} the undefended mean fell to {acc[(UNDEFENDED, crude)]:.1f}%"
                     f"; {', '.join(held) if held else 'no robust rule'} held "
                     f"(the worst robust rule kept {worst:.1f}%).")
        others = [a for a in attacks if a != crude] or attacks
        # The attack that hurt the robust rules most: the largest mean drop from "none".
        def drop(a: str) -> float:
            return statistics.fmean(acc.get((r, NO_ATTACK), math.nan) - acc[(r, a)]
                                    for r in robust)
        hurt = max(others, key=drop)
        rule = max(robust, key=lambda r: acc.get((r, NO_ATTACK), math.nan) - acc[(r, hurt)])
        line = (f"The crafted {hurt} hurt the robust rules most (-{drop(hurt):.1f} points on "
                f"average, {rule} "
                f"{acc.get((rule, NO_ATTACK), math.nan):.1f}% -> {acc[(rule, hurt)]:.1f}%)")
        rates = {r["attack"]: r["byzantine_selected_mean"] for r in table
                 if r["aggregator"] == "krum" and r["attack"] in others
                 and r.get("byzantine_selected_mean", math.nan) == r.get(
                     "byzantine_selected_mean", math.nan)}
        if rates:
            line += "; Krum picked a Byzantine vector in " + ", ".join(
                f"{100 * rate:.0f}% of rounds under {a}"
                for a, rate in sorted(rates.items(), key=lambda item: -item[1]))
        lines.append(line + ".")
    lines.append("Next: `byzsgd reproduce --list` (the papers' experiments), `byzsgd round` "
                 "(one round in detail), and docs/ (reproduction, distributed runs).")
    return lines


def run_demo(out: str | Path, *, config: str | Path | None = None,
             overrides: dict[str, Any] | None = None, seeds: list[int] | None = None,
             jobs: int = 1, quiet: bool = False, plots: bool = True) -> DemoResult:
    """Run the demo sweep under ``out`` (runs already complete are kept), write ``sweep.csv``,
    ``demo.txt`` (table and takeaway), ``heatmap.png`` and ``curves.png``, print the
    progress (unless ``quiet``), the table and the takeaway; return them."""
    out = Path(out)
    sweep = Sweep.from_toml(config or demo_config(), overrides or {}, seeds)
    points = sweep.points()
    progress = SweepProgress(len(points), "demo", enabled=not quiet)
    if not quiet and is_cold(DEMO_KERNELS):
        print("compiling kernels (first run only, ~20 s)...", flush=True)
    # Batches of ``jobs`` runs, so that the whole demo's progress and time left can be shown.
    for start in range(0, len(points), jobs):
        batch = points[start:start + jobs]
        run_points(batch, out, jobs=jobs, quiet=True)
        progress.update(start + len(batch), batch[-1].name)
    table = summarize(out, [(p.name, p.config) for p in points], list(sweep.axes))
    _add_selection(out, sweep, table)
    write_table(out / SWEEP_TABLE, table)
    write_json(out / "sweep.json", {"axes": sweep.axes, "seeds": sweep.seeds,
                                    "runs": [p.name for p in points]})
    lines = takeaway(table)
    text = format_matrix(table) + "\n\n" + "\n".join(lines)
    files = {"table": out / SWEEP_TABLE, "text": out / "demo.txt"}
    files["text"].write_text(text + "\n")
    if plots:
        from byzsgd.plots import plot_curves, plot_heatmap

        files["heatmap"] = plot_heatmap(table, out / "heatmap.png")
        files["curves"] = plot_curves(out, out / "curves.png")
    print(text)
    if not quiet:
        print("\n" + "\n".join(f"{k}: {v}" for k, v in files.items()))
        print(f"demo took {progress.elapsed():.0f}s")
    return DemoResult(table, lines, files)

