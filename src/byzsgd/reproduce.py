"""``byzsgd reproduce``: run one of the papers' experiments (``experiments/NAME.toml``) and
write, side by side, the paper's claim and what byzsgd measured: ``table.md`` (and
``table.csv``) with mean +/- std over seeds, and the figure.

An experiment file is a sweep file (``[experiment]`` base config, ``[sweep]`` axes, seeds and
per-name parameters, exactly as ``byzsgd sweep`` reads it) plus a ``[reproduce]`` table:

.. code-block:: toml

    [reproduce]
    title = "A Little Is Enough, Figure 2"
    paper = "Baruch et al., NeurIPS 2019"
    claim = "every defense degraded, Krum worst, plain averaging least"
    columns = ["best_test_accuracy", "final_test_accuracy"]   # see METRICS
    paper_column = "paper: max accuracy %"
    plot = { kind = "curves", x = "epoch", metric = "test_accuracy" }

    [[reproduce.variants]]          # optional: named groups of config overrides; a list
    label = "no attack"             # value replaces that [sweep] axis for this group
    attack = "none"
    aggregator = ["mean"]
    quick = { batch_size = 16 }     # this group's extra overrides in --quick mode

    [reproduce.paper]               # the paper's number (or words) per table row
    "mean / no attack" = 96.1

    [reproduce.quick]               # overrides for --quick (config fields; [sweep] axes;
    rounds = 10                     # seeds)
    dataset = "mnist-5k"

With variants, the runs are the variants only (each crossed with the ``[sweep]`` axes and
seeds); a variant with an empty label and no overrides stands for the plain grid.
Rows of the table are the grid points: the values of the ``[sweep]`` axes (``krum``,
``lr=0.2``), then the variant's label, joined by `` / ``. Runs already complete (same
config) are skipped, so an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

import csv
import itertools
import math
import multiprocessing as mp
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzsgd.config import ConfigError, ExperimentConfig
from byzsgd.experiment import config_value, path_token, read_toml, run_job
from byzsgd.results import read_csv, read_json, write_json

#: Environment variable naming the experiments directory (else found from cwd / package).
ENV_EXPERIMENTS = "BYZSGD_EXPERIMENTS"
DEFAULT_COLUMNS = ["best_test_accuracy", "final_test_accuracy"]

#: Per-run metrics the table can show: (header, kind) where kind "pct" prints 100 * value.
METRICS: dict[str, tuple[str, str]] = {
    "best_test_accuracy": ("max test acc %", "pct"),
    "final_test_accuracy": ("final test acc %", "pct"),
    "final_test_top3": ("final top-3 acc %", "pct"),
    "final_backdoor_success": ("final backdoor %", "pct"),
    "max_backdoor_success": ("max backdoor %", "pct"),
    "attacked_negative_fraction": ("rounds <g,Aggr> < 0 (attacked) %", "pct"),
    "attacked_mean_cosine": ("mean cos(g,Aggr) (attacked)", "num"),
    "attacked_byzantine_selected": ("Byzantine rows selected (attacked)", "num"),
    "final_train_loss": ("final train loss", "num"),
    "train_seconds": ("train s / run", "num"),
}


# -- locating and loading experiments -----------------------------------------------------------

def repo_root() -> Path:
    """The source checkout holding this package (``src/byzsgd`` -> repo root)."""
    return Path(__file__).resolve().parents[2]


def experiments_dir() -> Path:
    """``$BYZSGD_EXPERIMENTS``, else the nearest ``experiments/`` at or above the current
    directory, else the one of the source checkout this package was installed from."""
    env = os.environ.get(ENV_EXPERIMENTS)
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "experiments").is_dir() and any((d / "experiments").glob("*.toml")):
            return d / "experiments"
    return repo_root() / "experiments"


def available(directory: Path | None = None) -> list[str]:
    """Names of the experiments (``experiments/*.toml`` holding a ``[reproduce]`` table)."""
    d = directory or experiments_dir()
    return sorted(p.stem for p in d.glob("*.toml") if "reproduce" in read_toml(p))


@dataclass
class Variant:
    """A named group of config overrides (``overrides``) and axis replacements (``axes``)."""

    label: str
    overrides: dict[str, Any]
    axes: dict[str, list[Any]]
    quick: dict[str, Any]


@dataclass
class Experiment:
    """One reproduction: a sweep with its [reproduce] description."""

    name: str
    path: Path
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    seeds: list[int]
    params: dict[str, dict[str, Any]]
    info: dict[str, Any]
    variants: list[Variant] = field(default_factory=list)

    @property
    def title(self) -> str:
        return str(self.info.get("title", self.name))

    @property
    def columns(self) -> list[str]:
        return list(self.info.get("columns", DEFAULT_COLUMNS))

    @property
    def paper_values(self) -> dict[str, Any]:
        return dict(self.info.get("paper_values", {}))


def load(name: str, directory: Path | None = None) -> Experiment:
    """Read ``experiments/NAME.toml`` (or a path to a TOML file)."""
    path = Path(name)
    if path.suffix != ".toml" or not path.exists():
        d = directory or experiments_dir()
        path = d / f"{name}.toml"
        if not path.exists():
            known = ", ".join(available(d)) or "none"
            raise ConfigError(f"no experiment {name!r} in {d}; known: {known}")
    raw = read_toml(path)
    if "reproduce" not in raw:
        raise ConfigError(f"{path}: no [reproduce] table (not a reproduction experiment)")
    info = dict(raw["reproduce"])
    grid = dict(raw.get("sweep", {}))
    params = grid.pop("params", {})
    seeds = list(grid.pop("seeds", [0]))
    known = set(ExperimentConfig.field_names())
    for key, value in grid.items():
        if key not in known or not isinstance(value, list):
            raise ConfigError(f"{path}: [sweep] {key} must be a config field with a list")
    variants = []
    for v in info.pop("variants", []):
        v = dict(v)
        label = str(v.pop("label", ""))
        quick = dict(v.pop("quick", {}))
        axes = {k: val for k, val in v.items() if isinstance(val, list)}
        overrides = {k: val for k, val in v.items() if not isinstance(val, list)}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ConfigError(f"{path}: variant {label!r}: unknown field(s) {unknown}")
        variants.append(Variant(label, overrides, axes, quick))
    info["paper_values"] = info.pop("paper", {}) if isinstance(info.get("paper"), dict) \
        else info.pop("paper_values", {})
    return Experiment(path.stem, path, dict(raw.get("experiment", {})), grid, seeds, params,
                      info, variants)


# -- the grid -----------------------------------------------------------------------------------

@dataclass
class Point:
    """One run: its directory name, table row label, and config."""

    name: str
    row: str
    config: ExperimentConfig


def _resolve_data_dir(value: str | None, root: Path) -> str | None:
    """A relative data_dir is taken relative to the current directory if it exists there,
    else to the repository root (where the committed configs' ``../shared/data`` points)."""
    if value is None or Path(value).is_absolute():
        return value
    for base in (Path.cwd(), root):
        if (base / value).exists():
            return str((base / value).resolve())
    return str((root / value).resolve())


def _slug(text: str) -> str:
    """A file-name-safe form of a label: ``krum (30 + 27)`` -> ``krum_30+27``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.=+-]", "_", text)).strip("_")


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value)) if abs(value) >= 1 else f"{value:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def points(exp: Experiment, *, quick: bool = False, seeds: Sequence[int] | None = None
           ) -> list[Point]:
    """Every run of the experiment (all variants x axes x seeds), configs resolved."""
    quick_values = dict(exp.info.get("quick", {})) if quick else {}
    run_seeds = list(seeds) if seeds is not None else (
        list(quick_values.pop("seeds", exp.seeds[:1])) if quick else exp.seeds)
    quick_values.pop("seeds", None)
    root = exp.path.resolve().parent.parent
    out: list[Point] = []
    for variant in exp.variants or [Variant("", {}, {}, {})]:
        axes = {**exp.axes, **variant.axes}
        values = {**exp.base, **variant.overrides}
        for key, value in {**quick_values, **(variant.quick if quick else {})}.items():
            if key in axes and isinstance(value, list):
                axes[key] = value
            else:
                values[key] = value
                axes.pop(key, None)
        values["data_dir"] = _resolve_data_dir(values.get("data_dir"), root)
        base = ExperimentConfig.from_dict(values)
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            changes = dict(zip(keys, combo, strict=True))
            row_parts = [_fmt(v) if k in ("aggregator", "attack") else f"{k}={_fmt(v)}"
                         for k, v in changes.items()]
            if variant.label:
                row_parts.append(variant.label)
            row = " / ".join(row_parts) or exp.name
            for seed in run_seeds:
                cfg = base.replace(**changes, seed=seed)
                # per-name [sweep.params] override the base config, a variant's own
                # parameters override both
                own = variant.overrides
                cfg = cfg.replace(
                    aggregator_params={**cfg.aggregator_params,
                                       **exp.params.get(cfg.aggregator, {}),
                                       **own.get("aggregator_params", {})},
                    attack_params={**cfg.attack_params, **exp.params.get(cfg.attack, {}),
                                   **own.get("attack_params", {})})
                parts = ([_slug(variant.label)] if variant.label else []) + \
                    [f"{k}={path_token(v)}" for k, v in changes.items()] + [f"seed={seed}"]
                out.append(Point("__".join(parts), row, cfg))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{exp.path}: two runs share a name; give variants distinct labels")
    return out


# -- running ------------------------------------------------------------------------------------

def _state(run: Path, config: ExperimentConfig) -> str:
    """``complete``, ``partial`` (same config, resumable), ``stale`` (another config) or
    ``new``."""
    summary = run / "summary.json"
    if not summary.exists():
        return "new"
    try:
        done = read_json(summary)
    except (OSError, ValueError):
        return "stale"
    if done.get("config") != config.to_json():
        return "stale"
    return "complete" if done.get("status") == "complete" else "partial"


def _cost(cfg: ExperimentConfig) -> float:
    """A rough relative cost, to start the longest runs first."""
    return cfg.rounds * cfg.workers * cfg.batch_size * (cfg.local_steps or 1)


def run_points(pts: list[Point], out: Path, *, jobs: int = 1, quiet: bool = False,
               threads: int | None = None) -> int:
    """Run the points not complete yet (longest first, ``jobs`` processes of ``threads``
    torch threads each, default cores / jobs); returns how many ran."""
    for p in pts:
        p.config.validate()
    todo = sorted((p for p in pts if _state(out / p.name, p.config) != "complete"),
                  key=lambda p: -_cost(p.config))
    if not quiet:
        print(f"reproduce: {len(pts)} runs, {len(pts) - len(todo)} already complete, "
              f"{len(todo)} to run with {jobs} process(es)", flush=True)
    for p in todo:  # a run of an older version of the experiment's config: start over
        if _state(out / p.name, p.config) == "stale":
            if not quiet:
                print(f"  {p.name}: config changed since the last run; starting it over")
            shutil.rmtree(out / p.name)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    args = [(p.name, p.config.to_dict(), str(out / p.name), threads) for p in todo]

    def report(i: int, name: str, summary: dict[str, Any]) -> None:
        if not quiet:
            acc = summary.get("final_test_accuracy")
            print(f"  [{i}/{len(args)}] {name}: final test accuracy "
                  f"{'n/a' if acc is None else f'{100 * acc:.2f}%'}", flush=True)

    if jobs <= 1 or len(args) <= 1:
        for i, job in enumerate(args, 1):
            report(i, *run_job(job))
    else:
        with mp.get_context("spawn").Pool(min(jobs, len(args))) as pool:
            for i, (name, summary) in enumerate(pool.imap_unordered(run_job, args), 1):
                report(i, name, summary)
    return len(todo)


# -- measuring ----------------------------------------------------------------------------------

def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else float("nan")


def run_metrics(run: Path) -> dict[str, float]:
    """The per-run quantities of :data:`METRICS`, from summary.json, metrics.csv, rounds.csv."""
    summary = read_json(run / "summary.json")
    out = {k: _float(summary.get(k)) for k in ("best_test_accuracy", "final_test_accuracy",
                                                "final_test_top3", "final_backdoor_success",
                                                "final_train_loss", "train_seconds")}
    rows = read_csv(run / "metrics.csv")
    trained = [_float(r["backdoor_success"]) for r in rows if r["round"] != "0"]
    out["max_backdoor_success"] = max((v for v in trained if not math.isnan(v)),
                                      default=float("nan"))  # after training started
    attacked = [r for r in read_csv(run / "rounds.csv") if r.get("attacked") == "1"]
    inner = [_float(r["inner_product"]) for r in attacked]
    inner = [v for v in inner if not math.isnan(v)]
    out["attacked_negative_fraction"] = (sum(v < 0 for v in inner) / len(inner)
                                         if inner else float("nan"))
    out["attacked_mean_cosine"] = _nanmean([_float(r["cosine"]) for r in attacked])
    out["attacked_byzantine_selected"] = _nanmean([_float(r["byzantine_selected"])
                                                   for r in attacked])
    return out


def summarize(pts: list[Point], out: Path, columns: list[str]) -> list[dict[str, Any]]:
    """One row per table row label: mean and std over seeds of each column."""
    groups: dict[str, list[dict[str, float]]] = {}
    for p in pts:
        groups.setdefault(p.row, []).append(run_metrics(out / p.name))
    table = []
    for row, runs in groups.items():
        entry: dict[str, Any] = {"row": row, "seeds": len(runs)}
        for c in columns:
            values = [r[c] for r in runs if not math.isnan(r[c])]
            entry[f"{c}_mean"] = statistics.fmean(values) if values else float("nan")
            entry[f"{c}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def _cell(entry: dict[str, Any], column: str) -> str:
    mean, std = entry[f"{column}_mean"], entry[f"{column}_std"]
    if isinstance(mean, float) and math.isnan(mean):
        return "-"
    kind = METRICS.get(column, ("", "num"))[1]
    if kind == "pct":
        return f"{100 * mean:.1f} ± {100 * std:.1f}" if entry["seeds"] > 1 \
            else f"{100 * mean:.1f}"
    if column == "train_seconds":
        return f"{mean:.0f}"
    return f"{mean:.3g} ± {std:.2g}" if entry["seeds"] > 1 else f"{mean:.3g}"


def markdown_table(exp: Experiment, table: list[dict[str, Any]]) -> str:
    """The table rows: setting, the paper's value, our columns (mean ± std over seeds)."""
    paper = exp.paper_values
    header = ["setting", str(exp.info.get("paper_column", "paper")), "seeds",
              *(METRICS.get(c, (c, ""))[0] for c in exp.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in table:
        value = paper.get(e["row"], "")
        lines.append("| " + " | ".join([e["row"], str(value),
                                        str(e["seeds"]),
                                        *(_cell(e, c) for c in exp.columns)]) + " |")
    return "\n".join(lines)


# -- plotting -----------------------------------------------------------------------------------

def make_plot(exp: Experiment, pts: list[Point], out: Path, table: list[dict[str, Any]],
              path: Path) -> Path | None:
    """The figure of the experiment, by ``[reproduce] plot.kind``: ``curves`` (a metric vs
    epoch/round, one line per row, optional panels by a config key) or ``param`` (a table
    column vs a numeric config value, one line per series)."""
    from byzsgd import plots

    spec = dict(exp.info.get("plot", {"kind": "curves"}))
    kind = spec.get("kind", "curves")
    title = exp.title
    if kind == "curves":
        panel_key = spec.get("panel")
        groups: dict[str, dict[str, list[Path]]] = {}
        for p in pts:
            panel = ("" if panel_key is None
                     else f"{panel_key}={_fmt(config_value(p.config, panel_key))}")
            label = " / ".join(part for part in p.row.split(" / ") if part != panel) or p.row
            groups.setdefault(panel, {}).setdefault(label, []).append(out / p.name)
        return plots.plot_run_groups(groups, path, metric=spec.get("metric", "test_accuracy"),
                                     x=spec.get("x", "epoch"), title=title,
                                     vline=spec.get("vline"), logy=bool(spec.get("logy")))
    if kind == "param":
        x_key, series_key = spec["x"], spec.get("series", "aggregator")
        column = spec.get("metric", exp.columns[0])
        by_row = {e["row"]: e for e in table}
        series: dict[str, list[tuple[float, float, float]]] = {}
        seen: set[str] = set()
        for p in pts:
            if p.row in seen:
                continue
            seen.add(p.row)
            e = by_row[p.row]
            name = _fmt(config_value(p.config, series_key))
            series.setdefault(name, []).append(
                (float(config_value(p.config, x_key)), e[f"{column}_mean"], e[f"{column}_std"]))
        scale = 100.0 if METRICS.get(column, ("", ""))[1] == "pct" else 1.0
        paper = [(float(config_value(p.config, x_key)), _float(exp.paper_values.get(p.row)) / scale,
                  0.0) for p in pts if p.row in exp.paper_values]
        if paper and not any(math.isnan(v[1]) for v in paper):  # the paper's own numbers
            series["paper"] = sorted(set(paper))
        return plots.plot_param(series, path, xlabel=spec.get("xlabel", x_key),
                                ylabel=METRICS.get(column, (column, ""))[0], scale=scale,
                                title=title, logx=bool(spec.get("logx")))
    raise ConfigError(f"{exp.path}: unknown plot kind {kind!r}; use curves or param")


# -- the command --------------------------------------------------------------------------------

@dataclass
class Result:
    """What one reproduction wrote."""

    name: str
    out: Path
    table: list[dict[str, Any]]
    table_md: Path
    figure: Path | None
    wall_seconds: float
    runs_executed: int


def reproduce(name: str, *, quick: bool = False, seeds: int | None = None, jobs: int = 1,
              out: str | Path | None = None, quiet: bool = False,
              directory: Path | None = None, threads: int | None = None,
              log: Callable[[str], None] = print) -> Result:
    """Run experiment ``name`` (skipping complete runs) and write table.md, table.csv, the
    figure and reproduce.json under ``out`` (default ``runs/reproduce/NAME[-quick]``)."""
    exp = load(name, directory)
    out_dir = Path(out) if out else Path("runs") / "reproduce" / (
        exp.name + ("-quick" if quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    pts = points(exp, quick=quick, seeds=None if seeds is None else list(range(seeds)))
    tic = time.perf_counter()
    executed = run_points(pts, out_dir, jobs=jobs, quiet=quiet, threads=threads)
    wall = time.perf_counter() - tic
    table = summarize(pts, out_dir, exp.columns)
    with open(out_dir / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    figure = make_plot(exp, pts, out_dir, table, out_dir / "figure.png")
    previous = out_dir / "reproduce.json"
    history = read_json(previous) if previous.exists() else {}
    # time over the invocations that produced the current runs (all of them ran now: this one)
    total = wall if executed == len(pts) else float(history.get("wall_seconds_total", 0.0)) + wall
    write_json(previous, {"name": exp.name, "quick": quick, "runs": [p.name for p in pts],
                          "runs_executed": executed, "wall_seconds": wall,
                          "wall_seconds_total": total,
                          "configs": {p.name: p.config.to_json() for p in pts[:1]}})
    command = f"byzsgd reproduce {exp.name}" + (" --quick" if quick else "") + (
        f" --seeds {seeds}" if seeds is not None else "")
    seeds_used = sorted({p.config.seed for p in pts})
    text = [f"# {exp.title}", ""]
    if exp.info.get("paper_ref"):
        text += [f"Paper: {exp.info['paper_ref']}", ""]
    if exp.info.get("claim"):
        text += [f"**Claim.** {str(exp.info['claim']).strip()}", ""]
    if exp.info.get("setting"):
        text += [f"**Setting.** {str(exp.info['setting']).strip()}", ""]
    text += [f"Command: `{command}`" + ("  (quick smoke-test version)" if quick else ""), "",
             f"Seeds: {', '.join(map(str, seeds_used))}; runs: {len(pts)}; wall clock: "
             f"{wall:.0f} s this invocation ({executed} runs executed), {total:.0f} s in "
             f"total over invocations.", "", markdown_table(exp, table), ""]
    if figure is not None:
        text += [f"![{exp.title}]({figure.name})", ""]
    table_md = out_dir / "table.md"
    table_md.write_text("\n".join(text))
    if not quiet:
        log(markdown_table(exp, table))
        log(f"table: {table_md}")
        if figure is not None:
            log(f"figure: {figure}")
    return Result(exp.name, out_dir, table, table_md, figure, wall, executed)


def configure_parser(p: Any) -> None:
    """The ``byzsgd reproduce`` flags."""
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="experiment name(s) in experiments/ (see --list), or 'all'")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--quick", action="store_true",
                   help="the minutes-long smoke-test version of the same experiment")
    p.add_argument("--seeds", type=int, help="number of seeds (0..K-1; default: the file's)")
    p.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--out", help="results directory (default runs/reproduce/NAME[-quick]; "
                                 "with several names, a parent directory)")
    p.add_argument("--threads", type=int,
                   help="torch threads per process (default: cores / jobs)")
    p.add_argument("--quiet", action="store_true")


def main(args: Any) -> int:
    """Entry point of ``byzsgd reproduce``."""
    if args.list or not args.names:
        d = experiments_dir()
        print(f"experiments in {d}:")
        for n in available(d):
            exp = load(n, d)
            print(f"  {n:<28} {exp.title}")
        return 0
    names = available() if args.names == ["all"] else args.names
    for n in names:
        out = None
        if args.out:
            out = Path(args.out) / n if len(names) > 1 else Path(args.out)
        reproduce(n, quick=args.quick, seeds=args.seeds, jobs=args.jobs, out=out,
                  quiet=args.quiet, threads=args.threads)
    return 0
