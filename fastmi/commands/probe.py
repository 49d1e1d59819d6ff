"""Probe every layer of an activation cache (or those --layers names) and write the per-layer bounds on I(T; z).

Reads a cache made by ``fastmi extract``; writes results.csv, results.json, results.png and
split.json to --out and prints the table.  Pass --split to score on the held-out sentences of an
earlier run (e.g. another model's, same corpus).  Example:

    fastmi probe --cache runs/minilm --out runs/minilm-probe
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastmi.commands._probe_options import add_probe_arguments, probe_config

HELP = "probe each layer of an activation cache and bound its mutual information"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, help="activation cache directory (from fastmi extract)")
    parser.add_argument("--out", required=True, help="directory for results.csv/json/png and split.json")
    parser.add_argument(
        "--split", default=None, help="split.json to reuse (default: OUT/split.json if present, else a new split)"
    )
    parser.add_argument(
        "--layers",
        default="all",
        help="layers to probe: 'all' (every layer the cache holds), 'last', a list '0,3,6', a range '2-5', "
        "or a mix; 0 is the embedding output",
    )
    add_probe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from fastmi.activations.cache import ActivationCache
    from fastmi.data.split import Split
    from fastmi.runtime.preflight import check_output_dir, resolve_device
    from fastmi.sweep import load_or_make_split, print_summary, probe_cache, write_outputs

    settings = probe_config(args)
    resolve_device(settings.device)  # the config checked every other setting as it was made
    out = Path(args.out)
    check_output_dir(out)  # before the probe trains: its results must have somewhere to go
    cache = ActivationCache.open(args.cache)
    layers = cached_layers(cache, args.layers)
    meta = cache.metadata
    if args.split is not None:
        split = Split.load(args.split)
        split.check(int(meta["num_rows"]), meta.get("corpus_fingerprint"))
    else:  # OUT is created only with the results: a failed probe leaves nothing behind
        split = load_or_make_split(out, int(meta["num_rows"]), meta.get("corpus_fingerprint"), settings)
    result = probe_cache(cache, split, settings, progress=args.progress, layers=layers)
    print_summary(result, write_outputs(result, out, split))
    return 0


def cached_layers(cache, text: str) -> list[int]:
    """The layers ``text`` names, each of which the cache must hold ('all': every layer it holds)."""
    from fastmi.activations.cache import format_layers
    from fastmi.activations.extraction import parse_layers

    if text.strip().lower() == "all":
        return list(cache.layers)
    wanted = parse_layers(text, int(cache.metadata.get("num_layers") or max(cache.layers)))
    missing = [layer for layer in wanted if layer not in cache.layers]
    if missing:
        raise ValueError(
            f"--layers {text}: the cache {cache.directory} holds layers {format_layers(cache.layers)}, "
            f"not {format_layers(missing)}; extract them with fastmi extract --layers"
        )
    return wanted
