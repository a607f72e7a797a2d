"""``byzsgd round``: the command line of the one-round tool (:func:`byzsgd.oneround.evaluate`
on gradients from a file or drawn from a Gaussian)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from byzsgd._params import parse_params
from byzsgd.oneround import evaluate


def load_gradients(path: str | Path) -> Tensor:
    """A (rows, d) floating tensor from a ``.pt`` file (a saved tensor) or a ``.npy`` file."""
    p = Path(path)
    if p.suffix == ".pt":
        x = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(x, Tensor):
            raise ValueError(f"{p}: expected a saved tensor, got {type(x).__name__}")
    elif p.suffix == ".npy":
        x = torch.from_numpy(np.load(p, allow_pickle=False))
    else:
        raise ValueError(f"{p}: unsupported file type {p.suffix!r}; use .pt or .npy")
    if x.dim() != 2:
        raise ValueError(f"{p}: expected shape (rows, d), got {tuple(x.shape)} (a list of "
                         f"scalars is shape (rows, 1))")
    if not x.is_floating_point():
        x = x.double()
    return x


def _synthetic_shape(text: str) -> tuple[int, int]:
    try:
        h, d = (int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,D (two integers), got {text!r}") from None
    if h < 1 or d < 1:
        raise argparse.ArgumentTypeError(f"H and D must be >= 1, got {text!r}")
    return h, d


def _data_seed(seed: int) -> int:
    """A seed for the synthetic data, independent of the attack's stream (same ``seed``)."""
    return int(np.random.SeedSequence([int(seed), 0x6A7A]).generate_state(1)[0])


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the one-round tool's flags to ``p``."""
    p.add_argument("--aggregator", required=True, metavar="NAME",
                   help="aggregation rule (byzsgd.aggregators.names())")
    p.add_argument("--aggregator-param", action="append", default=[], metavar="K=V",
                   help="rule parameter (repeatable), e.g. base=medoid")
    p.add_argument("--attack", required=True, metavar="NAME",
                   help="attack (byzsgd.attacks.names())")
    p.add_argument("--attack-param", action="append", default=[], metavar="K=V",
                   help="attack parameter (repeatable), e.g. epsilon=0.1 or bits=22,30,31,32")
    p.add_argument("--byzantine", type=int, default=0, metavar="F",
                   help="number of Byzantine workers f (dimensional attacks: the rule's "
                        "per-coordinate q)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gradients", metavar="FILE",
                        help="correct gradients, (h, d), as a .pt tensor or .npy array")
    source.add_argument("--synthetic", type=_synthetic_shape, metavar="H,D",
                        help="draw h correct gradients of dimension d from N(mean, std^2)")
    p.add_argument("--own", metavar="FILE",
                   help="the Byzantine workers' honestly computed gradients, (f, d) "
                        "(default: the first f correct rows; with --synthetic, f fresh draws)")
    p.add_argument("--mean", type=float, default=0.1,
                   help="--synthetic: mean of every coordinate (default 0.1)")
    p.add_argument("--std", type=float, default=1.0,
                   help="--synthetic: standard deviation of every coordinate (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack and synthetic data")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the tool with parsed ``args``; print the report; 0 on success, 2 on bad input."""
    try:
        f = args.byzantine
        if f < 0:
            raise ValueError(f"f must be an int >= 0, got {f} (--byzantine)")
        own = load_gradients(args.own) if args.own else None
        if args.synthetic is not None:
            h, d = args.synthetic
            if not (math.isfinite(args.std) and args.std >= 0 and math.isfinite(args.mean)):
                raise ValueError("--mean must be finite and --std finite and >= 0")
            gen = torch.Generator().manual_seed(_data_seed(args.seed))
            draws = torch.randn((h + f, d), generator=gen, dtype=torch.float64)
            data = (args.mean + args.std * draws).to(torch.float32)
            honest = data[:h]
            if own is None:
                own = data[h:].clone()
        else:
            honest = load_gradients(args.gradients)
        report = evaluate(args.aggregator, args.attack, honest, f,
                          rule_params=parse_params(args.aggregator_param),
                          attack_params=parse_params(args.attack_param), own=own,
                          seed=args.seed)
    except (ValueError, TypeError, OSError) as e:
        print(f"byzsgd round: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``byzsgd round`` without the rest of the CLI)."""
    parser = configure_parser(argparse.ArgumentParser(
        prog="byzsgd round", description="one round of one rule under one attack"))
    return run(parser.parse_args(argv))

