"""The ``byzsgd`` command: run, sweep, plot, list, round, demo, reproduce."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from byzsgd.config import ConfigError
from byzsgd.flags import (
    add_config_flags,
    config_overrides,
    out_dir,
    positive_int,
    resolve_config,
    seed_list,
    with_file_plugins,
)

DEMO_OUT = "runs/demo"


# -- commands ----------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from byzsgd.experiment import run

    config = resolve_config(args).validate()
    out = Path(args.out)
    if args.backend == "distributed":
        from byzsgd.distributed.launch import run_from_args

        code = run_from_args(config, args)
        if code == 0 and _diverged(out):
            return DIVERGED
        return code
    summary = run(config, out, resume=args.resume, overwrite=args.overwrite,
                  quiet=args.quiet)
    if summary["status"] == "diverged":
        _say_diverged(out, summary)
        return DIVERGED
    if not args.quiet:
        print(f"final test accuracy {100 * summary['final_test_accuracy']:.2f}% "
              f"(best {100 * summary['best_test_accuracy']:.2f}%), "
              f"{summary['rounds_per_s'] or 0:.1f} rounds/s; results in {out}/")
    return 0


#: ``byzsgd run``'s exit code when training diverged (status "diverged" in summary.json).
DIVERGED = 3


def _diverged(out: Path) -> bool:
    from byzsgd.results import read_json

    path = out / "summary.json"
    if not (path.exists() and read_json(path).get("status") == "diverged"):
        return False
    _say_diverged(out, read_json(path))
    return True


def _say_diverged(out: Path, summary: dict) -> None:
    print(f"byzsgd: training diverged (a non-finite loss or parameter at round "
          f"{summary.get('diverged_round')}): stopped; status \"diverged\" in "
          f"{out / 'summary.json'}", file=sys.stderr)


def cmd_sweep(args: argparse.Namespace) -> int:
    from byzsgd.experiment import Sweep, format_table, run_sweep
    from byzsgd.plots import plot_curves, plot_heatmap

    sweep = Sweep.from_toml(args.config, with_file_plugins(config_overrides(args),
                                                           args.config), args.seeds)
    sweep.base.load_plugins()
    table = run_sweep(sweep, args.out, jobs=args.jobs, quiet=args.quiet)
    print(format_table(table))
    out = Path(args.out)
    print(f"table: {out / 'sweep.csv'}")
    if not args.no_plot:
        print(f"curves: {plot_curves(out, out / 'curves.png')}")
        if "aggregator" in sweep.axes and "attack" in sweep.axes:
            print(f"heat map: {plot_heatmap(table, out / 'heatmap.png')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from byzsgd.demo import run_demo

    run_demo(args.out, overrides=config_overrides(args), seeds=args.seeds, jobs=args.jobs,
             quiet=args.quiet, plots=not args.no_plot)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from byzsgd.experiment import SWEEP_TABLE
    from byzsgd.plots import plot_curves, plot_heatmap
    from byzsgd.results import read_csv

    root = Path(args.runs)
    out = Path(args.out) if args.out else root / f"curves.{args.format}"
    print(f"curves: {plot_curves(root, out, args.metric)}")
    table_path = root / SWEEP_TABLE
    if table_path.exists():
        table = [{**r, **{k: float(v) for k, v in r.items() if k.endswith(("_mean", "_std"))}}
                 for r in read_csv(table_path)]
        if table and "aggregator" in table[0] and "attack" in table[0]:
            heat = out.with_name(f"heatmap{out.suffix}")
            print(f"heat map: {plot_heatmap(table, heat)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from byzsgd import aggregators, attacks, data, models
    from byzsgd.config import ExperimentConfig

    ExperimentConfig(plugins=list(args.plugin)).load_plugins()

    def section(title: str, items: list[tuple[str, str]]) -> None:
        print(title)
        width = max(len(n) for n, _ in items)
        for name, text in items:
            print(f"  {name:<{width}}  {text}")
        print()

    section("aggregation rules:", [(n, aggregators.spec(n).summary) for n in aggregators.names()])
    section("attacks:", [(n, attacks.describe(n)) for n in attacks.names()])
    section("data sets:", [(n, data.describe(n)) for n in data.names()])
    section("models:", [(n, models.describe(n)) for n in models.names()])
    return 0


def cmd_round(args: argparse.Namespace) -> int:
    from byzsgd import cli_round

    return cli_round.run(args)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from byzsgd import reproduce

    return reproduce.main(args)


# -- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byzsgd", description="Byzantine-robust distributed SGD: does rule X survive "
        "attack Y with f of n workers Byzantine?")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one experiment")
    p.add_argument("--config", help="TOML config file (flags override it)")
    p.add_argument("--out", type=out_dir, default="runs/run",
                   help="results directory (default: runs/run)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    from byzsgd.distributed.launch import add_arguments as add_distributed_flags

    add_distributed_flags(p)
    add_config_flags(p)
    p.set_defaults(func=cmd_run)

    for name, func, help_text in (("sweep", cmd_sweep, "run a grid of experiments"),
                                  ("demo", cmd_demo, "the main job: a small comparison on "
                                                     "mnist-5k, table and plots")):
        p = sub.add_parser(name, help=help_text)
        if name == "sweep":
            p.add_argument("--config", required=True,
                           help="TOML file with [experiment] and [sweep] tables")
            p.add_argument("--out", type=out_dir, default="runs/sweep", help="results directory")
        else:
            p.add_argument("--out", type=out_dir, default=DEMO_OUT, help="results directory")
        p.add_argument("--seeds", type=seed_list,
                       help="comma-separated seeds (override the file's)")
        p.add_argument("--jobs", type=positive_int, default=2,
                       help="parallel processes (default 2)")
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--no-plot", action="store_true", help="skip the plots")
        add_config_flags(p)
        p.set_defaults(func=func)

    p = sub.add_parser("plot", help="plot accuracy curves (and a sweep's heat map)")
    p.add_argument("runs", help="a run directory or a sweep directory")
    p.add_argument("--out", help="output file (.png or .pdf)")
    p.add_argument("--format", choices=("png", "pdf"), default="png")
    p.add_argument("--metric", default="test_accuracy",
                   help="metrics.csv column to plot (default test_accuracy)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("list", help="rules, attacks, data sets and models")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (its names are listed too); repeatable")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("round", help="one round: what rule X makes of attack Y on given "
                                     "gradients (inner product, cosine, selection)")
    from byzsgd import cli_round

    cli_round.configure_parser(p)
    p.set_defaults(func=cmd_round)

    p = sub.add_parser("reproduce", help="run a paper's experiment (experiments/NAME.toml) "
                                         "and write its table (paper vs ours) and figure")
    from byzsgd import reproduce

    reproduce.configure_parser(p)
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    from byzsgd.tuning import tune_process

    tune_process()  # first: the parser's imports load torch, which reads GOMP_SPINCOUNT once
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"byzsgd: invalid configuration: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"byzsgd: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbyzsgd: interrupted; `byzsgd run --resume` continues from the last "
              "checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

