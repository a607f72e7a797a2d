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
    plot = { kind = "curves", x = "epoch", metric = "test_accuracy" }  # or "param", or
    # "heatmap" with rows / cols / panel / metric as in [[reproduce.tables]]

    [[reproduce.variants]]          # optional: named groups of config overrides; a list
    label = "no attack"             # value replaces that [sweep] axis for this group
    attack = "none"
    aggregator = ["mean"]
    quick = { batch_size = 16 }     # this group's extra overrides in --quick mode

    [reproduce.paper]               # the paper's number (or words) per table row
    "mean / no attack" = 96.1

    [[reproduce.tables]]            # optional: more tables, in table.md and NAME.csv
    kind = "worst-case"             # or "matrix" (rows x cols, mean ± std over seeds)
    name = "worst-case"
    rows = ["pre_aggregators", "aggregator"]   # config keys labelling a row: "nnm + krum"
    cols = "attack"                 # ... a column; the minimum is taken over the columns
    panel = "partition"             # optional: one table part (heat-map panel) per value
    exclude = ["none"]              # columns left out of the worst case (shown as reference)

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
import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byzsgd import flags
from byzsgd.config import ConfigError
from byzsgd.experiment import run_points
from byzsgd.grid import Point, Sweep, Variant, config_value, fmt, mean_std, read_toml
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
class Experiment:
    """One reproduction: a grid (``sweep``: ``[experiment]``, ``[sweep]`` and the variants)
    with its ``[reproduce]`` description (``info``)."""

    name: str
    path: Path
    sweep: Sweep
    info: dict[str, Any]

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
    variants = tuple(Variant.from_table(v, str(path)) for v in info.pop("variants", []))
    info["paper_values"] = info.pop("paper", {}) if isinstance(info.get("paper"), dict) \
        else info.pop("paper_values", {})
    sweep = dataclasses.replace(Sweep.from_toml(path), variants=variants)
    return Experiment(path.stem, path, sweep, info)


def points(exp: Experiment, *, quick: bool = False, seeds: Sequence[int] | None = None,
           data_dir: str | Path | None = None) -> list[Point]:
    """Every run of the experiment (all variants x axes x seeds), configs resolved; a
    relative ``data_dir`` is resolved against the experiments' checkout, and ``data_dir``
    (``--data-dir``) replaces the file's in every run."""
    pts = exp.sweep.points(quick=dict(exp.info.get("quick", {})) if quick else None,
                           seeds=seeds, data_root=exp.path.resolve().parent.parent)
    if data_dir is None:
        return pts
    where = str(Path(data_dir).resolve())
    return [dataclasses.replace(p, config=p.config.replace(data_dir=where)) for p in pts]


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


def summarize(pts: list[Point], out: Path, columns: list[str],
              measures: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """One row per table row label: mean and std over seeds of each column (``measures``:
    :func:`run_metrics` of each run by name, read from ``out`` when not given)."""
    measure = (lambda p: measures[p.name]) if measures is not None \
        else (lambda p: run_metrics(out / p.name))
    return mean_std(pts, lambda p: {"row": p.row}, measure, columns)


# -- rule x attack matrices and worst cases -----------------------------------------------------

def _keys(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def point_label(cfg: Any, keys: Sequence[str]) -> str:
    """The values of config ``keys`` joined by `` + `` (empty lists and None left out):
    ``["pre_aggregators", "aggregator"]`` -> ``nnm + krum``, or ``krum`` without
    pre-aggregation; ``-`` when all are empty."""
    parts = [fmt(v) for k in keys
             if (v := config_value(cfg, k)) is not None and v != [] and v != ""]
    return " + ".join(parts) or "-"


@dataclass
class Matrix:
    """A metric's mean, std and seed count per (panel, row, column) cell of a grid: rows and
    columns labelled by config keys (e.g. rule x attack), one panel per value of another
    (e.g. the partition); labels in order of appearance."""

    metric: str
    panels: list[str]
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str, str], tuple[float, float, int]]

    def cell(self, panel: str, row: str, col: str) -> tuple[float, float, int]:
        return self.cells.get((panel, row, col), (float("nan"), 0.0, 0))

    def grid(self, panel: str) -> list[list[tuple[float, float, int]]]:
        return [[self.cell(panel, r, c) for c in self.cols] for r in self.rows]

    def worst(self, panel: str, row: str, exclude: Sequence[str] = ()
              ) -> tuple[str, tuple[float, float, int]] | None:
        """The column (and its cell) of least mean in ``row``, ``exclude`` columns left out
        (None when no cell has a value). A tie goes to the column listed first."""
        found = [(c, self.cell(panel, row, c)) for c in self.cols if c not in exclude]
        found = [(c, v) for c, v in found if not math.isnan(v[0])]
        return min(found, key=lambda item: item[1][0]) if found else None


def matrix(pts: Sequence[Point], measures: dict[str, dict[str, float]], spec: dict[str, Any]
           ) -> Matrix:
    """The :class:`Matrix` of ``spec``: ``rows`` and ``cols`` (a config key or a list of keys,
    see :func:`point_label`), optional ``panel`` (a config key), ``metric`` (a per-run metric,
    default final_test_accuracy); cells hold the mean and std over the runs (seeds). Rows are
    grouped by the value of their last key (``krum``, ``nnm + krum``, then ``median``, ...),
    in order of appearance otherwise."""
    rows, cols = _keys(spec.get("rows", "aggregator")), _keys(spec.get("cols", "attack"))
    panel = spec.get("panel")
    metric = str(spec.get("metric", "final_test_accuracy"))
    if metric not in METRICS:
        raise ConfigError(f"matrix metric {metric!r} is not one of {', '.join(METRICS)}")

    def key(p: Point) -> dict[str, Any]:
        return {"panel": "" if panel is None else f"{panel}={fmt(config_value(p.config, panel))}",
                "row": point_label(p.config, rows), "col": point_label(p.config, cols)}

    table = mean_std(pts, key, lambda p: measures[p.name], (metric,))
    cells = {(e["panel"], e["row"], e["col"]): (e[f"{metric}_mean"], e[f"{metric}_std"],
                                                e["seeds"]) for e in table}
    # rows grouped by the value of their last key (krum, nnm + krum, bucketing + krum, ...)
    groups = list(dict.fromkeys(fmt(config_value(p.config, rows[-1])) for p in pts))
    group_of = {point_label(p.config, rows): groups.index(fmt(config_value(p.config, rows[-1])))
                for p in pts}
    labels = list(dict.fromkeys(e["row"] for e in table))
    return Matrix(metric, list(dict.fromkeys(e["panel"] for e in table)),
                  sorted(labels, key=lambda r: group_of[r]),
                  list(dict.fromkeys(e["col"] for e in table)), cells)


def _pct(mean: float, std: float, seeds: int, scale: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{scale * mean:.1f} ± {scale * std:.1f}" if seeds > 1 else f"{scale * mean:.1f}"


def _scale(metric: str) -> float:
    return 100.0 if METRICS.get(metric, ("", "num"))[1] == "pct" else 1.0


def matrix_markdown(m: Matrix) -> str:
    """The matrix as markdown tables, one per panel (rows x columns, mean ± std)."""
    scale, out = _scale(m.metric), []
    for panel in m.panels:
        header = [panel or METRICS[m.metric][0], *m.cols]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in m.rows:
            cells = [r, *(_pct(*m.cell(panel, r, c), scale) for c in m.cols)]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def worst_case(m: Matrix, exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per row and panel: the worst-case value over the columns (``exclude`` left out, e.g.
    the no-attack column), the column that achieves it, its std over seeds, and the
    excluded columns' values (the reference), as the field reports robustness (the worst
    accuracy of a rule over the attacks, mean over seeds: Allouah et al., AISTATS 2023;
    Farhadkhani et al., ICML 2022)."""
    table = []
    for row in m.rows:
        entry: dict[str, Any] = {"row": row}
        for panel in m.panels:
            found = m.worst(panel, row, exclude)
            prefix = f"{panel}:" if panel else ""
            for c in exclude:
                entry[f"{prefix}{c}_mean"] = m.cell(panel, row, c)[0]
            entry[f"{prefix}worst_mean"] = found[1][0] if found else float("nan")
            entry[f"{prefix}worst_std"] = found[1][1] if found else float("nan")
            entry[f"{prefix}worst_seeds"] = found[1][2] if found else 0
            entry[f"{prefix}worst_by"] = found[0] if found else ""
        table.append(entry)
    return table


def worst_case_markdown(m: Matrix, exclude: Sequence[str] = ()) -> str:
    """:func:`worst_case` as a markdown table: per panel, the excluded columns (reference),
    the worst case (mean ± std over seeds) and the column achieving it."""
    scale = _scale(m.metric)
    header = ["rule"]
    for panel in m.panels:
        prefix = f"{panel}: " if panel else ""
        header += [f"{prefix}{c}" for c in exclude] + [f"{prefix}worst case", f"{prefix}by"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in m.rows:
        cells = [row]
        for panel in m.panels:
            cells += [_pct(*m.cell(panel, row, c), scale) for c in exclude]
            found = m.worst(panel, row, exclude)
            cells += [_pct(*found[1], scale), found[0]] if found else ["-", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
              path: Path, measures: dict[str, dict[str, float]] | None = None) -> Path | None:
    """The figure of the experiment, by ``[reproduce] plot.kind``: ``curves`` (a metric vs
    epoch/round, one line per row, optional panels by a config key), ``param`` (a table
    column vs a numeric config value, one line per series) or ``heatmap`` (a per-run metric,
    mean ± std over seeds, as a ``rows`` x ``cols`` grid per ``panel``: :func:`matrix`).
    ``measures``: :func:`run_metrics` by run name, read from ``out`` when not given."""
    from byzsgd import plots

    spec = dict(exp.info.get("plot", {"kind": "curves"}))
    kind = spec.get("kind", "curves")
    title = exp.title
    if kind == "curves":
        panel_key = spec.get("panel")
        groups: dict[str, dict[str, list[Path]]] = {}
        for p in pts:
            panel = ("" if panel_key is None
                     else f"{panel_key}={fmt(config_value(p.config, panel_key))}")
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
            name = fmt(config_value(p.config, series_key))
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
    if kind == "heatmap":
        m = matrix(pts, measures if measures is not None
                   else {p.name: run_metrics(out / p.name) for p in pts}, spec)
        return plots.plot_matrices({panel: m.grid(panel) for panel in m.panels}, m.rows, m.cols,
                                   path, label=METRICS[m.metric][0], scale=_scale(m.metric),
                                   title=title, xlabel=spec.get("xlabel", ""),
                                   ylabel=spec.get("ylabel", ""))
    raise ConfigError(f"{exp.path}: unknown plot kind {kind!r}; use curves, param or heatmap")


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
              data_dir: str | Path | None = None,
              log: Callable[[str], None] = print) -> Result:
    """Run experiment ``name`` (skipping complete runs) and write table.md, table.csv, the
    figure and reproduce.json under ``out`` (default ``runs/reproduce/NAME[-quick]``);
    ``data_dir`` replaces the experiment's data directory."""
    exp = load(name, directory)
    out_dir = Path(out) if out else Path("runs") / "reproduce" / (
        exp.name + ("-quick" if quick else ""))
    pts = points(exp, quick=quick, seeds=None if seeds is None else list(range(seeds)),
                 data_dir=data_dir)
    tic = time.perf_counter()
    executed = run_points(pts, out_dir, jobs=jobs, quiet=quiet, threads=threads,
                          what="reproduce")
    wall = time.perf_counter() - tic
    measures = {p.name: run_metrics(out_dir / p.name) for p in pts}
    table = summarize(pts, out_dir, exp.columns, measures)
    _write_csv(out_dir / "table.csv", table)
    extra = extra_tables(exp, pts, measures, out_dir)
    figure = make_plot(exp, pts, out_dir, table, out_dir / "figure.png", measures)
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
             f"total over invocations.", "", *extra,
             *(["## Every grid point", ""] if extra else []), markdown_table(exp, table), ""]
    if figure is not None:
        text += [f"![{exp.title}]({figure.name})", ""]
    table_md = out_dir / "table.md"
    table_md.write_text("\n".join(text))
    if not quiet:
        log("\n".join([*extra, markdown_table(exp, table)]))
        log(f"table: {table_md}")
        if figure is not None:
            log(f"figure: {figure}")
    return Result(exp.name, out_dir, table, table_md, figure, wall, executed)


def _write_csv(path: Path, table: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


#: Kinds of ``[[reproduce.tables]]``: a rows x cols matrix, or the worst case per row.
TABLE_KINDS = ("matrix", "worst-case")


def extra_tables(exp: Experiment, pts: list[Point], measures: dict[str, dict[str, float]],
                 out: Path) -> list[str]:
    """The ``[[reproduce.tables]]`` of the experiment as markdown sections (title, table,
    blank line), each also written as ``NAME.csv`` (``name``, default ``table-K``). A table
    is ``kind = "matrix"`` (:func:`matrix_markdown`) or ``kind = "worst-case"``
    (:func:`worst_case_markdown`, ``exclude``: columns left out of the minimum), over the
    :func:`matrix` of its ``rows``, ``cols``, ``panel`` and ``metric``."""
    text: list[str] = []
    for k, spec in enumerate(exp.info.get("tables", [])):
        spec = dict(spec)
        kind = spec.get("kind", "matrix")
        if kind not in TABLE_KINDS:
            raise ConfigError(f"{exp.path}: unknown table kind {kind!r}; use "
                              f"{' or '.join(TABLE_KINDS)}")
        m = matrix(pts, measures, spec)
        name = str(spec.get("name", f"table-{k + 1}"))
        if kind == "worst-case":
            exclude = [str(c) for c in spec.get("exclude", [])]
            body = worst_case_markdown(m, exclude)
            _write_csv(out / f"{name}.csv", worst_case(m, exclude))
        else:
            body = matrix_markdown(m)
            _write_csv(out / f"{name}.csv", [
                {"panel": panel, "row": r, "col": c, f"{m.metric}_mean": v[0],
                 f"{m.metric}_std": v[1], "seeds": v[2]}
                for panel in m.panels for r in m.rows for c in m.cols
                if (v := m.cell(panel, r, c))[2]])
        title = spec.get("title", f"{METRICS[m.metric][0]}, {kind}")
        text += [f"## {title}", "", body, ""]
    return text


def configure_parser(p: Any) -> None:
    """The ``byzsgd reproduce`` flags."""
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="experiment name(s) in experiments/ (see --list), or 'all'")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--quick", action="store_true",
                   help="the minutes-long smoke-test version of the same experiment")
    p.add_argument("--seeds", type=flags.positive_int,
                   help="number of seeds (0..K-1; default: the file's)")
    p.add_argument("--jobs", type=flags.positive_int, default=2,
                   help="parallel processes (default 2)")
    p.add_argument("--out", type=flags.out_dir,
                   help="results directory (default runs/reproduce/NAME[-quick]; with several "
                        "names, a parent directory)")
    p.add_argument("--threads", type=flags.positive_int,
                   help="torch threads per process (default: cores / jobs)")
    p.add_argument("--data-dir", type=flags.out_dir,
                   help="the data directory of every run (default: the experiment's)")
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
                  quiet=args.quiet, threads=args.threads, data_dir=args.data_dir)
    return 0
