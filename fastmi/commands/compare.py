"""Compare two layers, or two models at matched depths, of a finished probe or sweep.

Each bound's difference A - B comes with a paired bootstrap interval over the held-out sentences
the two share (every model of a sweep is scored on the same ones).  A and B are 'model' (all
depths, each matched to the other model's nearest relative depth) or 'model:LAYER' with LAYER an
integer, 'first', 'last' or 'peak' (the interior layer of lowest validation cross-entropy).  Models
with different tokenizers are compared on recoverable fractions (bound / own H(T)).  A model is
named as in the table, or as it was passed to --model (demo alias, hub id, relative or absolute
path, or a .gguf file's name without the suffix).  Examples:

    fastmi compare --out runs/demo minilm smollm2
    fastmi compare --out runs/demo smollm2:peak smollm2:last
"""

from __future__ import annotations

import argparse

HELP = "difference of each bound between two layers or two models, with paired bootstrap intervals"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory holding results.json (from probe, sweep or demo)")
    parser.add_argument(
        "a",
        metavar="A",
        help="'model' or 'model:LAYER' (LAYER: integer, first, last, peak); model: its name in the table "
        "or what was passed to --model",
    )
    parser.add_argument("b", metavar="B", help="the same for the other side; the table shows A - B")
    parser.add_argument("--level", type=float, default=0.95, help="two-sided level of each interval")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument(
        "--bound", default="all", choices=("fano", "list_fano", "variational", "all"), help="which bound to compare"
    )
    parser.add_argument("--json", default=None, help="also write the comparison to this JSON file")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastmi.results.result import RecoverabilityResult
    from fastmi.stats.comparison import COMPARED_BOUNDS, compare

    path = Path(args.out) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {args.out}; run fastmi probe, sweep or demo with --out {args.out}")
    result = RecoverabilityResult.from_json(path)
    chosen = COMPARED_BOUNDS if args.bound == "all" else (args.bound,)
    comparison = compare(
        result, args.a, args.b, level=args.level, n_bootstrap=args.bootstrap, seed=args.seed, bounds_to_compare=chosen
    )
    print(comparison.format())
    if args.json:
        print(f"\nwrote {comparison.to_json(args.json)}")
    return 0
