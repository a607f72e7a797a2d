"""Attack speed: ms per forge, against one read pass of the honest matrix and against ByzFL's
and byzpy's implementation of the same attack, measured side by side.

    python benchmarks/attacks.py                 # n = 51, d = 1e6, f = 12 (h = 39 honest)
    python benchmarks/attacks.py --quick         # d = 1e4, 3 repeats (smoke run)
    python benchmarks/attacks.py --markdown docs/benchmarks.md
    python benchmarks/attacks.py --byzfl-python PATH --byzfl-pythonpath DIR

Each attack forges its f rows as the simulator has it do: in place, in the rows after the
honest ones of the received (n, d) matrix. Rule-aware attacks ask the rule named in the table
(``optimal-*``: ByzFL's default of 20 rule calls). Where ByzFL / byzpy import (this
interpreter, ``--byzfl-python`` or ``$BYZSGD_BYZFL_PYTHON``; ``--no-byzfl`` skips them), they
get the same matrix (saved as .npy) and the calls alternate -- read pass (``honest.sum()``,
one flat reduction), ours, ByzFL's,
byzpy's -- medians of each; ``x ByzFL`` / ``x byzpy``: their time over ours (above 1: byzsgd
faster). Without them the anchors are quoted with their machine, and nothing is divided.
"""

from __future__ import annotations

# first: bound OpenMP's spinning, which must happen before torch loads (byzsgd/tuning.py)
from byzsgd.tuning import tune_process  # isort: skip

tune_process()

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _foreign
import _machine
import _report

from byzsgd import aggregators, attacks

#: (label, attack, params, rule or None, the other libraries' operation or None).
CASES = [
    ("alie", "alie", {"z": 1.5, "knowledge": "omniscient"}, None, "alie"),
    ("ipm", "ipm", {"epsilon": 0.1}, None, "ipm"),
    ("sign-flip", "sign-flip", {}, None, "sign-flip"),
    ("gaussian", "gaussian", {"sigma": 200.0}, None, "gaussian"),
    ("min-max", "min-max", {}, None, None),
    ("min-max std", "min-max", {"perturbation": "std"}, None, None),
    ("min-sum", "min-sum", {}, None, None),
    ("fang-krum", "fang-krum", {}, "krum", None),
    ("fang-trim", "fang-trim", {}, "median", None),
    ("mimic warm-up", "mimic", {"warmup": 10 ** 9}, None, None),
    # ByzFL's and byzpy's Mimic return the row of a worker given by index (no heuristic)
    ("mimic frozen", "mimic", {"warmup": 1}, None, "mimic"),
    ("optimal-alie", "optimal-alie", {}, "median", "optimal-alie"),
    ("optimal-alie krum", "optimal-alie", {}, "krum", "optimal-alie krum"),
    ("optimal-ipm", "optimal-ipm", {}, "median", "optimal-ipm"),
]


def measure(matrix: torch.Tensor, f: int, repeats: int,
            foreign: _foreign.Foreign | None) -> dict[str, dict[str, float | None]]:
    n = matrix.shape[0]
    h = n - f
    honest, out = matrix[:h], matrix[h:]
    own = matrix[h:].clone()
    offered = foreign.load(matrix, f) if foreign is not None else set()
    forges, theirs = {}, {}
    for label, name, params, rule_name, other in CASES:
        rule = aggregators.bind(rule_name or "krum", f)
        attack = attacks.get(name, **params)

        def forge(attack=attack, rule=rule):
            attack(honest=honest, f=f, n=n, rule=rule, out=out, own=own,
                   generator=torch.Generator().manual_seed(1))

        forges[label] = forge
        theirs[label] = [op for op in (f"byzfl:{other}", f"byzpy:{other}")
                         if other and op in offered]
    medians = _foreign.interleave(forges, theirs, lambda: honest.sum(), foreign, repeats)
    result = {}
    for label, med in medians.items():
        result[label] = {"read": med["read"], "ours": med["ours"],
                         "byzfl": next((v for k, v in med.items() if k.startswith("byzfl:")),
                                       None),
                         "byzpy": next((v for k, v in med.items() if k.startswith("byzpy:")),
                                       None)}
    return result


def table(result: dict[str, dict[str, float | None]], markdown: bool) -> str:
    rules = {label: rule or "" for label, _, _, rule, _ in CASES}
    headers = ["attack", "rule", "ms", "x read pass", "ByzFL ms", "x ByzFL", "byzpy ms",
               "x byzpy"]
    rows = [[label, rules[label], _report.ms(r["ours"]), f"{r['ours'] / r['read']:.1f}",
             _report.ms(r["byzfl"]), _report.ratio(r["byzfl"], r["ours"]),
             _report.ms(r["byzpy"]), _report.ratio(r["byzpy"], r["ours"])]
            for label, r in result.items()]
    return (_report.markdown_table if markdown else _report.text_table)(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e4, 3 repeats")
    parser.add_argument("--d", type=int, default=None, help="default 1e6 (1e4 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3")
    parser.add_argument("--no-byzfl", action="store_true", help="same as --byzfl-python none")
    parser.add_argument("--markdown", default=None, metavar="PATH",
                        help="also write the table as the 'attacks' section of PATH")
    _foreign.add_arguments(parser)
    args = parser.parse_args(argv)
    n, f = 51, 12
    d = args.d or (10_000 if args.quick else 1_000_000)
    repeats = args.repeats or 3
    command = _foreign.command("attacks.py", argv, args.byzfl_python)
    run = _machine.begin()
    python = None if args.no_byzfl else _foreign.find_python(args.byzfl_python)
    foreign = _foreign.start(python, args.byzfl_pythonpath, torch.get_num_threads())
    print(_foreign.versions_line(foreign))
    missing = _foreign.missing(foreign)
    for library in missing:  # ANCHORS.md has no attack timings: say so
        print(f"{library.split()[0]} not installed: no anchor numbers for attacks in "
              "ANCHORS.md to quote; its columns stay empty")
    print(f"n={n}, f={f}, d={d}, float32, median of {repeats} interleaved forges each; "
          "x read pass: ours over one read pass of the honest matrix; x ByzFL / x byzpy: their "
          "ms over ours (above 1: byzsgd faster)")
    matrix = torch.randn(n, d, generator=torch.Generator().manual_seed(0)) + 0.1
    try:
        result = measure(matrix, f, repeats, foreign)
    finally:
        if foreign is not None:
            foreign.close()
    print(table(result, markdown=False))
    run.finish()
    if args.markdown:
        body = _report.section(
            f"Attacks, n = {n}, d = {d}, f = {f}", command,
            f"median of {repeats} interleaved forges", run.header,
            [_foreign.versions_line(foreign)],
            run.loads, run.took, _machine.high_load(), table(result, markdown=True),
            ["ByzFL's and byzpy's attacks return one vector; ours write the f rows. Their Mimic "
             "copies a fixed worker (our 'mimic frozen'); their optimal attacks search 20 "
             "values like ours."])
        _report.write_section(args.markdown, "attacks", body)
        print(f"wrote the 'attacks' section of {args.markdown}")


if __name__ == "__main__":
    main()
