"""Extract and probe several models on one corpus, all scored on the same held-out sentences.

Each model's cache goes to OUT/cache/<model> and is reused when the sweep runs again; finished
per-model results (OUT/models/<model>/<setting>.json, one file per probe setting such as --vocab) are
reused when their settings match.  Writes
OUT/results.csv, results.json, results.png and split.json and prints the table.  Example:

    fastmi sweep --model minilm --model smollm2 --corpus demo --max-sentences 500 --out runs/demo
"""

from __future__ import annotations

import argparse

from fastmi.commands._placement_options import add_placement_arguments, load_options
from fastmi.commands._probe_options import add_probe_arguments, probe_config
from fastmi.defaults import DEFAULT_MAX_LENGTH

HELP = "extract and probe several models on one corpus, on a shared split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        dest="models",
        help="model to sweep (repeat for several): 'minilm', 'smollm2', a directory, a .gguf file or a hub id",
    )
    parser.add_argument("--corpus", default="demo", help="'demo', a .txt file (one sentence per line) or a .jsonl file")
    parser.add_argument("--field", default="text", help="JSON field holding the sentence, for .jsonl corpora")
    parser.add_argument("--out", required=True, help="output directory (caches, split, results)")
    parser.add_argument("--max-sentences", type=int, default=None, help="use only the first N sentences")
    parser.add_argument(
        "--pooling",
        default="mean",
        choices=("mean", "first", "last", "max"),
        help="how a sentence's token states become one vector",
    )
    parser.add_argument("--layers", default="all", help="'all', 'last', '0,3,6', '2-5'; 0 is the embedding output")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    parser.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per sentence (longer ones are truncated)"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="model compute dtype (default: float32 on CPU, bfloat16 on CUDA)",
    )
    parser.add_argument(
        "--revision", default=None, help="hub commit, branch or tag of the hub-id models (local ones have none)"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow a hub model's own Python code to run (off unless asked)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace caches in OUT built with other settings")
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=None,
        help="sentences per cache shard, the unit of work and of resumption (default: ~1 GB of all "
        "layers); under torchrun make several shards per process",
    )
    add_probe_arguments(parser)
    add_placement_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastmi.runtime.preflight import resolve_device
    from fastmi.sweep import print_summary, sweep

    settings = probe_config(args)
    extract_device = resolve_device(settings.device)  # the one default of every command: cuda if available
    result = sweep(
        args.models,
        args.corpus,
        args.out,
        settings=settings,
        max_sentences=args.max_sentences,
        pooling=args.pooling,
        layers=args.layers,
        batch_size=args.batch_size,
        max_length=args.max_length,
        dtype=args.dtype,
        overwrite=args.overwrite,
        progress=args.progress,
        cache_dtype=args.cache_dtype,
        load_options=load_options(args, extract_device),
        shard_rows=args.shard_rows,
        field=args.field,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    out = Path(args.out)
    paths = {name: out / f"results.{name}" for name in ("csv", "json", "png")}
    paths["split"] = out / "split.json"
    print_summary(result, paths)
    return 0
