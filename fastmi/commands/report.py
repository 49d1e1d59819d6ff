"""Print the table of a finished probe or sweep and (re)draw its plot.

Reads OUT/results.json; prints the per-layer table; writes the plot (default OUT/results.png).
Example:

    fastmi report --out runs/demo --bound variational --fraction
"""
from __future__ import annotations

import argparse

HELP = "print the table of a finished run and draw its plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory holding results.json (from probe, sweep or demo)")
    parser.add_argument("--plot", default=None, help="PNG to write (default: OUT/results.png)")
    parser.add_argument("--bound", default="all", choices=("fano", "list_fano", "variational", "all"),
                        help="which bound to plot")
    parser.add_argument("--fraction", action="store_true", help="plot each bound over H(T) instead of in bits")
    parser.add_argument("--columns", default=None, help="comma-separated table columns (default: a terminal-sized set)")
    parser.add_argument("--claims", action="store_true",
                        help="test the paper's two claims on this sweep (differences, paired intervals, verdicts) "
                        "and write OUT/claims.json")
    parser.add_argument("--level", type=float, default=0.95, help="level of the claims' intervals")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..result import RecoverabilityResult

    out = Path(args.out)
    path = out / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {out}; run fastmi probe, sweep or demo with --out {out} first")
    result = RecoverabilityResult.from_json(path)
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    print(result.format_table(columns))
    plot = result.plot(Path(args.plot) if args.plot else out / "results.png", bound=args.bound, fraction=args.fraction)
    print(f"\nwrote {plot}")
    if args.claims:
        from ..claims import claims_to_json, evaluate_claims, format_claims

        claims = evaluate_claims(result, level=args.level)
        print("\n" + format_claims(claims) + f"wrote {claims_to_json(claims, out / 'claims.json')}")
    return 0
