"""Pool every layer's hidden states of a model over a corpus into an activation cache.

The cache (safetensors shards + manifest.json) is keyed by model, revision, dtype, pooling,
max length and corpus; an interrupted run picks up at the first unfinished shard when started
again with the same arguments.  Example:

    fastmi extract --model minilm --corpus demo --out runs/minilm
"""

from __future__ import annotations

import argparse
import time

from fastmi.commands._placement_options import add_placement_arguments, load_options
from fastmi.defaults import DEFAULT_MAX_LENGTH

HELP = "pool each layer's hidden states over a corpus into an activation cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="'minilm' or 'smollm2' (bundled demos), a local model directory, a .gguf file, or a hub id",
    )
    parser.add_argument(
        "--corpus",
        required=True,
        help="'demo' (BBC News sentences), a .txt file (one sentence per line) or a .jsonl file",
    )
    parser.add_argument("--field", default="text", help="JSON field holding the sentence, for .jsonl corpora")
    parser.add_argument(
        "--max-sentences",
        type=int,
        default=None,
        help="use only the first N sentences of the corpus (default: all; 2000 for 'demo')",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="cache directory (default: <home>/activations/<model>-<hash>, home being $FASTMI_HOME, "
        "else $XDG_CACHE_HOME/fastmi, else ~/.cache/fastmi)",
    )
    parser.add_argument(
        "--pooling",
        default="mean",
        choices=("mean", "first", "last", "max"),
        help="how a sentence's token states become one vector (padding never counts)",
    )
    parser.add_argument(
        "--layers",
        default="all",
        help="'all', 'last', a list '0,3,6', a range '2-5', or a mix; 0 is the embedding output",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    parser.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per sentence (longer ones are truncated)"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1, auto (all GPUs) (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="model compute dtype (default: float32 on CPU, bfloat16 on CUDA); embeddings are stored fp32",
    )
    parser.add_argument("--revision", default=None, help="hub commit, branch or tag (hub ids only)")
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=None,
        help="sentences per shard, the unit of work and of resumption (default: ~1 GB of all layers)",
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue a cache of the same model/corpus/settings; --no-resume refuses a started cache",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing cache in --out even if it was built for something else",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow a hub model's own Python code to run (off unless asked)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_placement_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from fastmi.activations.cache import format_layers
    from fastmi.activations.extraction import extract
    from fastmi.data.corpus import Corpus
    from fastmi.models.loading import load_model
    from fastmi.runtime.paths import activations_home
    from fastmi.runtime.preflight import check_cache_dir, check_extraction_arguments, resolve_device

    started = time.perf_counter()
    if args.out is None:
        check_cache_dir(activations_home(), overwrite=True, flag="the activation cache folder")
    else:
        check_cache_dir(args.out, args.overwrite)
    check_extraction_arguments(
        [args.model],
        args.layers,
        args.pooling,
        args.batch_size,
        args.max_length,
        args.shard_rows,
        args.revision,
        args.trust_remote_code,
        args.device,
    )
    corpus = Corpus.load(args.corpus, field=args.field, max_sentences=args.max_sentences)
    model = load_model(
        args.model,
        dtype=args.dtype,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        progress=args.progress,
        **load_options(args, resolve_device(args.device)),
    )
    cache = extract(
        model,
        corpus,
        pooling=args.pooling,
        layers=args.layers,
        cache_dir=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        max_length=args.max_length,
        shard_rows=args.shard_rows,
        progress=args.progress,
        cache_dtype=args.cache_dtype,
    )
    meta = cache.metadata
    print(f"cache: {cache.directory}")
    print(
        f"{meta['model']} ({meta['architecture']}, {meta['num_layers']} blocks, d={meta['hidden_size']}, "
        f"{meta['dtype']}, cache {cache.cache_dtype}) on {meta['corpus_name']} ({meta['num_rows']} sentences): "
        f"layers {format_layers(cache.layers)} ({len(cache.layers)}), {meta['pooling']} pooling, "
        f"max_length {meta['max_length']}, "
        f"{time.perf_counter() - started:.1f}s"
    )
    return 0
