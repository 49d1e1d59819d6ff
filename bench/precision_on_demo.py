"""How far the probe's bounds move when its training loss runs in bf16 rather than fp32.

    FASTMI_HOME=... python bench/precision_on_demo.py CACHE_DIR [CACHE_DIR ...] --out precision.json

For each cache (e.g. the demo's minilm and smollm2 caches, at the demo's alphabet ``top:512``),
``fastmi.recoverability`` runs twice with the same seed and split, ``TrainConfig(precision="fp32")``
and ``precision="bf16"`` (bf16 operands, fp32 accumulation: on a CPU the products of bf16 values
are exact in fp32, so this is what tensor cores compute).  Held-out scoring is fp32 in both.  The
report is the largest absolute difference, over layers, of every bound column (bits), and the
seconds each run took.  Caches are named by their folder's name (``minilm``, ``smollm2``).  ``--out``
is the run's working JSON, rewritten after each cache, so a stopped run keeps its results (a rerun
with the same ``--out`` keeps the caches an earlier run recorded there); a finished run appends the
caches it measured as one row to bench/results/precision_on_demo.jsonl (bench/history.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import fastmi
from fastmi.probe.training import TrainConfig

# point values and lower confidence values of the three bounds, and the held-out cross-entropy
COMPARED = (
    "fano_bits",
    "fano_lcb",
    "list_fano_bits",
    "list_fano_lcb",
    "variational_bits",
    "variational_lcb",
    "ce_bits",
    "p_error",
    "p_error_k",
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", type=Path, help="activation cache directories")
    parser.add_argument("--vocab", default="top:512", help="alphabet, as fastmi.recoverability takes it")
    parser.add_argument("--out", type=Path, required=True, help="JSON written after each cache")
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="only these layers of each cache (default: all); the same split and alphabet",
    )
    args = parser.parse_args(argv)
    report: dict = {"vocab": args.vocab, "caches": {}}
    if args.out.exists():  # keep the caches an earlier run measured
        report["caches"] = json.loads(args.out.read_text()).get("caches", {})
    for path in args.caches:
        cache = fastmi.ActivationCache.open(path)
        source, extra = cache, {}
        if args.layers is not None:
            source = {layer: cache.embeddings(layer) for layer in args.layers}
            extra = {"targets": cache.targets, "vocab_size": int(cache.metadata["vocab_size"])}
        runs = {}
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            result = fastmi.recoverability(
                source, vocab=args.vocab, train=TrainConfig(precision=precision), progress=False, **extra
            )
            runs[precision] = (result.table, time.perf_counter() - start)
        table32, seconds32 = runs["fp32"]
        table16, seconds16 = runs["bf16"]
        report["caches"][path.name] = {
            "layers": len(table32) if args.layers is None else args.layers,
            "seconds": {"fp32": round(seconds32, 1), "bf16": round(seconds16, 1)},
            "max_abs_difference": {c: max(abs(a[c] - b[c]) for a, b in zip(table32, table16)) for c in COMPARED},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.out)
        print(json.dumps(report["caches"][path.name], indent=2), flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import history

    measured = {path.name: report["caches"][path.name] for path in args.caches}
    history.record("precision_on_demo", {"vocab": args.vocab, "caches": measured}, source="bench/precision_on_demo.py")


if __name__ == "__main__":
    main()
