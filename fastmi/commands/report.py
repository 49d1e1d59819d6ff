"""Print the table of a finished probe or sweep and (re)draw its plot.

Reads RUN/results.json (RUN: the --out directory of probe, sweep or demo) or a result .json file
given by path (e.g. one setting's file under RUN/models/); prints the per-layer table; writes the
plot (default: results.png beside the JSON).  Example:

    fastmi report runs/demo --bound variational --fraction
"""

from __future__ import annotations

import argparse

HELP = "print the table of a finished run and draw its plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run",
        nargs="?",
        default=None,
        metavar="RUN",
        help="what to report: the output directory of a probe, sweep or demo run (its results.json), "
        "or a result .json file",
    )
    # --from names the input as well; --out is what this option was called before, kept working.
    parser.add_argument("--from", "--out", dest="run_option", default=None, metavar="RUN", help="same as RUN")
    parser.add_argument("--plot", default=None, help="PNG to write (default: results.png beside the JSON)")
    parser.add_argument(
        "--bound", default="all", choices=("fano", "list_fano", "variational", "all"), help="which bound to plot"
    )
    parser.add_argument("--fraction", action="store_true", help="plot each bound over H(T) instead of in bits")
    parser.add_argument("--columns", default=None, help="comma-separated table columns (default: a terminal-sized set)")
    parser.add_argument(
        "--claims",
        action="store_true",
        help="test the paper's two claims on this sweep (differences, paired intervals, verdicts) "
        "and write claims.json beside the results",
    )
    parser.add_argument("--level", type=float, default=0.95, help="level of the claims' intervals")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastmi.results.result import RecoverabilityResult

    if args.run is not None and args.run_option is not None and args.run != args.run_option:
        raise ValueError(f"two inputs given ({args.run} and --from {args.run_option}); give one")
    run = args.run or args.run_option
    if run is None:
        raise ValueError("name the run to report: fastmi report RUN (the --out directory of probe, sweep or demo)")
    given = Path(run)
    path = given / "results.json" if given.is_dir() or not given.suffix else given
    if not path.is_file():
        where = f"no results.json in {given}" if path != given else f"no result file {given}"
        raise FileNotFoundError(f"{where}; run fastmi probe, sweep or demo with --out {given} first")
    result = RecoverabilityResult.from_json(path)
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    print(result.format_table(columns))
    default_plot = path.parent / "results.png" if path.name == "results.json" else path.with_suffix(".png")
    plot = result.plot(Path(args.plot) if args.plot else default_plot, bound=args.bound, fraction=args.fraction)
    print(f"\nwrote {plot}")
    if args.claims:
        from fastmi.stats.claims import claims_to_json, evaluate_claims, format_claims

        claims = evaluate_claims(result, level=args.level)
        print("\n" + format_claims(claims) + f"wrote {claims_to_json(claims, path.parent / 'claims.json')}")
    return 0
