"""Aggregation rules and pre-aggregators: ms per call, against one read pass of the input and
against ByzFL's and byzpy's implementation of the same operation, measured side by side.

    python benchmarks/aggregators.py                      # n = 51, d = 1e6, f = 12
    python benchmarks/aggregators.py --quick              # d = 1e4, 3 repeats (smoke run)
    python benchmarks/aggregators.py --markdown docs/benchmarks.md
    python benchmarks/aggregators.py --byzfl-python /path/to/python \\
        --byzfl-pythonpath /path/to/torchvision-stub

Every registered rule (but ``brute``, exponential in n) and every pre-aggregator, plus
chains, on one seeded (n, d) float32 matrix. Clipping and ARC are timed three ways: the public
function (a new (n, d) matrix), their factors alone (what a chain computes: ``clipping
factors``, ``arc factors``) and written into a warm buffer (``out=``, what a chain does for a
rule that cannot read the factors); each against ByzFL's in-place clipping of a copy made
before its clock. The chains ``clipping+mean``, ``arc+median``, ``arc+krum`` run as
``aggregators.bind`` runs them (factors handed to the rule) against ByzFL's Clipping / ARC
followed by its rule. Where ByzFL / byzpy import (in this interpreter,
or in the one ``--byzfl-python`` / ``$BYZSGD_BYZFL_PYTHON`` names), they get the same matrix
(saved as .npy) in their interpreter, and the calls alternate -- one read pass, ours, ByzFL's,
byzpy's -- for ``--repeats`` rounds; each column is the median of its calls. ``x read pass``:
our time over one read pass (``x.sum()``: one flat reduction over every value, torch's
fastest read of x; the column sums ``x.sum(0)`` took 1.5-2x as long on the 2-core EPYC) timed
next to it; ``x ByzFL``, ``x byzpy``: their
time over ours (above 1: byzsgd faster). Without them the benchmark prints the anchor numbers
of ANCHORS.md with the machine they were measured on, and divides by nothing.
"""

from __future__ import annotations

# first: bound OpenMP's spinning, which must happen before torch loads (byzsgd/tuning.py)
from byzsgd.tuning import tune_process  # isort: skip

tune_process()

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _foreign
import _machine
import _report

from byzsgd import aggregators
from byzsgd.aggregators.chain import PRE_AGGREGATORS
from byzsgd.aggregators.preaggregation import arc_factors, clipping_factors

#: Rules left out, with the reason printed.
SKIPPED = {"brute": "exhaustive search over subsets, exponential in n"}
#: ByzFL / byzpy operations with the same definition, where they differ from our name.
#: ByzFL's median and trimmed mean are faster on numpy input: both inputs are timed, the
#: faster counts (marked "numpy").
NUMPY_TOO = {"median", "trimmed-mean"}
#: Where the other library's definition differs from ours, said in the table.
NOTES = {
    "geomed": "ByzFL: smoothed Weiszfeld, T = 3, nu = 0.1; byzpy: Weiszfeld to tol 1e-6",
    "rfa": "all three: smoothed Weiszfeld, 3 iterations, nu = 0.1 (byzpy: eps)",
    "centered-clipping": "one iteration (L = 1), tau = 100, from 0",
    "bucketing": "s = 2",
    "clipping": "c = 1",
    "clipping factors": "the chain's clipping: the factors s (n,), x_i * s_i never written; "
                        "ByzFL: Clipping on a copy made before its clock",
    "arc factors": "the chain's ARC: the factors s (n,); ByzFL: ARC on a copy made before its "
                   "clock",
    "clipping out=": "written into a buffer reused call after call (no fresh pages)",
    "arc out=": "written into a buffer reused call after call (no fresh pages)",
}
#: Our operation -> the other libraries' operation it is compared with, where they differ.
THEIRS = {"clipping factors": "clipping", "clipping out=": "clipping", "arc factors": "arc",
          "arc out=": "arc"}


def our_ops(x: torch.Tensor, f: int) -> dict[str, Callable[[], object]]:
    """name -> one call on x: every rule, every pre-aggregator, two chains."""
    ops: dict[str, Callable[[], object]] = {}
    for name in aggregators.names():
        if name in SKIPPED:
            continue
        rule = aggregators.get(name)
        params = {"iters": 3, "nu": 0.1} if name == "rfa" else {}
        ops[name] = lambda rule=rule, params=params: rule(x, f, **params)
    small = x[:, : max(1, x.shape[1] // 10)].contiguous()
    generator = torch.Generator().manual_seed(0)
    for name, spec in PRE_AGGREGATORS.items():
        params = {"s": 2, "generator": generator} if name == "bucketing" else \
            {"c": 1.0} if name == "clipping" else {}
        ops[name] = lambda spec=spec, params=params: spec.apply(x, f, **params)
        if name == "nnm":
            ops["nnm d/10"] = lambda spec=spec: spec.apply(small, f)
    nnm_krum = aggregators.bind("krum", f, pre=["nnm"])
    ops["nnm+krum"] = lambda: nnm_krum(x)
    ops["nnm d/10+krum"] = lambda: nnm_krum(small)
    bucketing_median = aggregators.bind("median", f, pre=[("bucketing", {"s": 2})])
    ops["bucketing+median"] = lambda: bucketing_median(x)
    clip, arc = PRE_AGGREGATORS["clipping"].apply, PRE_AGGREGATORS["arc"].apply
    buffer = torch.empty_like(x)
    ops["clipping factors"] = lambda: clipping_factors(x, f, c=1.0)
    ops["clipping out="] = lambda: clip(x, f, c=1.0, out=buffer)
    ops["arc factors"] = lambda: arc_factors(x, f)
    ops["arc out="] = lambda: arc(x, f, out=buffer)
    for rule, stage in (("mean", ("clipping", {"c": 1.0})), ("median", "arc"),
                        ("krum", "arc")):
        chain = aggregators.bind(rule, f, pre=[stage])
        ops[f"{stage if isinstance(stage, str) else stage[0]}+{rule}"] = \
            lambda chain=chain: chain(x)
    return ops


def measure(x: torch.Tensor, f: int, repeats: int,
            foreign: _foreign.Foreign | None) -> dict[str, dict[str, float | None]]:
    """Median ms per operation: ours, its read pass, ByzFL's, byzpy's, interleaved."""
    ops = our_ops(x, f)
    theirs: dict[str, list[str]] = {name: [] for name in ops}
    if foreign is not None:
        offered = foreign.load(x, f)
        for name in ops:
            for lib in ("byzfl", "byzpy"):
                op = THEIRS.get(name, name)
                variants = [f"{lib}:{op}"] + ([f"{lib}:{op} numpy"]
                                              if lib == "byzfl" and op in NUMPY_TOO else [])
                theirs[name] += [v for v in variants if v in offered]
    medians = _foreign.interleave(ops, theirs, lambda: x.sum(), foreign, repeats)
    result: dict[str, dict[str, float | None]] = {}
    for name, med in medians.items():
        row: dict[str, float | None] = {"read": med["read"], "ours": med["ours"]}
        for lib in ("byzfl", "byzpy"):
            candidates = {k: v for k, v in med.items() if k.startswith(lib + ":") and v}
            best = min(candidates, key=candidates.get) if candidates else None
            row[lib] = candidates[best] if best else None
            row[lib + "_numpy"] = 1.0 if best and best.endswith("numpy") else None
        result[name] = row
    return result


def table(result: dict[str, dict[str, float | None]], markdown: bool) -> str:
    headers = ["operation", "ms", "x read pass", "ByzFL ms", "x ByzFL", "byzpy ms", "x byzpy"]
    rows = []
    for name, r in result.items():
        ours = r["ours"]
        byzfl = _report.ms(r["byzfl"]) + (" (numpy)" if r["byzfl_numpy"] else "")
        rows.append([name, _report.ms(ours), f"{ours / r['read']:.1f}", byzfl,
                     _report.ratio(r["byzfl"], ours), _report.ms(r["byzpy"]),
                     _report.ratio(r["byzpy"], ours)])
    return (_report.markdown_table if markdown else _report.text_table)(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e4, 3 repeats")
    parser.add_argument("--n", type=int, default=51)
    parser.add_argument("--d", type=int, default=None, help="default 1e6 (1e4 with --quick)")
    parser.add_argument("--f", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (3 with --quick)")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help="also write the table as the 'aggregators' section of PATH")
    _foreign.add_arguments(parser)
    args = parser.parse_args(argv)
    n, f = args.n, args.f
    d = args.d or (10_000 if args.quick else 1_000_000)
    repeats = args.repeats or (3 if args.quick else 5)
    command = _foreign.command("aggregators.py", argv, args.byzfl_python)
    run = _machine.begin()
    foreign = _foreign.start(_foreign.find_python(args.byzfl_python), args.byzfl_pythonpath,
                             torch.get_num_threads())
    print(_foreign.versions_line(foreign))
    missing = _foreign.missing(foreign)
    for library in missing:
        print(_foreign.quote_line(library))
    print(f"n={n}, d={d}, f={f}, float32, median of {repeats} interleaved calls each; "
          "x read pass: ours over x.sum(); x ByzFL / x byzpy: their ms over ours "
          "(above 1: byzsgd faster)")
    for name, why in SKIPPED.items():
        print(f"not timed: {name} ({why})")
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    try:
        result = measure(x, f, repeats, foreign)
    finally:
        if foreign is not None:
            foreign.close()
    print(table(result, markdown=False))
    if "nnm" in result and result["nnm"]["byzfl"] is None and foreign is not None:
        NOTES["nnm"] = ("ByzFL gathers an (n, n - f, d) tensor: beyond 2 GiB it runs on d/10 "
                        "only (row 'nnm d/10')")
    for name, note in NOTES.items():
        if name in result:
            print(f"  {name}: {note}")
    run.finish()
    if args.markdown:
        body = _report.section(
            f"Rules and pre-aggregators, n = {n}, d = {d}, f = {f}", command,
            f"median of {repeats} interleaved calls", run.header,
            [_foreign.versions_line(foreign), *[_foreign.quote_line(lib) for lib in missing]],
            run.loads, run.took, _machine.high_load(), table(result, markdown=True),
            [*[f"{name}: {note}" for name, note in NOTES.items() if name in result],
             *[f"not timed: {name} ({why})" for name, why in SKIPPED.items()]])
        _report.write_section(args.markdown, "aggregators", body)
        print(f"wrote the 'aggregators' section of {args.markdown}")


if __name__ == "__main__":
    main()
