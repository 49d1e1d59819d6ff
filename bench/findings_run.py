"""The runs behind the README's findings: probe caches (or the finished head of unfinished ones),
with sample-size curves, then the paired comparisons and the paper's claims.

An extraction that is still running (or was stopped) has finished shards 0..k-1; this script probes
the first N sentences of each cache, N at most the rows every cache has finished, so models that ran
at different speeds are still compared on the same sentences and one split.  Usage:

    python bench/findings_run.py --out runs/large --rows 2500 --vocab top:512 --curve \\
        --cache minilm=runs/cache/minilm --cache smollm2=runs/cache/smollm2

    python bench/findings_run.py --combine runs/pool_mean/results.json runs/pool_first/results.json \\
        runs/pool_last/results.json --rename 1:minilm=minilm-first --rename 2:smollm2=smollm2-last \\
        --out runs/poolings

Writes OUT/results.{csv,json,png}, OUT/claims.json, OUT/compare_*.json and OUT/timing.json; a run that
probes appends its settings and probe seconds as one row to bench/results/findings_run.jsonl
(bench/history.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fastmi.activations.cache import ActivationCache
from fastmi.data.split import Split
from fastmi.probe.memory import parse_bytes
from fastmi.probe.training import TrainConfig
from fastmi.results.result import RecoverabilityResult
from fastmi.stats.claims import claims_to_json, evaluate_claims, format_claims
from fastmi.stats.comparison import compare
from fastmi.sweep import write_outputs


class CacheHead:
    """The first ``rows`` sentences of a cache (every layer's shards over them finished)."""

    def __init__(self, cache: ActivationCache, rows: int, name: str):
        shards = -(-rows // cache.shard_rows)
        every = set(range(shards))
        self.layers = sorted(int(l) for l, s in cache._manifest["units"].items() if every <= {int(x) for x in s})
        if not self.layers:
            raise ValueError(f"{cache.directory}: no layer has finished its first {rows} rows")
        self.cache, self.rows, self.shards = cache, rows, shards
        meta = cache.metadata
        meta.update(
            model=name,
            num_rows=rows,
            corpus_fingerprint=f"{meta['corpus_fingerprint']}[:{rows}]"
            if rows < cache.num_rows
            else meta["corpus_fingerprint"],
        )
        self.metadata = meta

    def embeddings(self, layer: int) -> torch.Tensor:
        parts = [torch.from_numpy(self.cache._read_unit(layer, s)["embeddings"].copy()) for s in range(self.shards)]
        return torch.cat(parts)[: self.rows]

    def unembedding(self, rows=None):
        return self.cache.unembedding(rows)

    def input_embedding(self, rows=None):
        return self.cache.input_embedding(rows)

    @property
    def targets(self):
        return self.cache.targets.select(torch.arange(self.rows))


def finished_rows(cache: ActivationCache) -> int:
    """Rows whose shards are finished at every layer, from row 0 on."""
    done = min(len(cache.finished_shards(layer)) for layer in range(int(cache.metadata["num_layers"]) + 1))
    for shard in range(done):
        if any(shard not in cache.finished_shards(layer) for layer in range(int(cache.metadata["num_layers"]) + 1)):
            done = shard
            break
    return min(done * cache.shard_rows, cache.num_rows)


def renamed(result: RecoverabilityResult, old: str, new: str) -> RecoverabilityResult:
    rows = [dict(r, model=new) if r["model"] == old else r for r in result.table]
    held = {new if m == old else m: h for m, h in result.held_out.items()}
    curves = [dict(c, model=new) if c["model"] == old else c for c in result.curves]
    config = dict(result.config)
    if "per_model" in config:
        config["per_model"] = {new if m == old else m: v for m, v in config["per_model"].items()}
    return RecoverabilityResult(rows, config, held, curves)


def analyse(result: RecoverabilityResult, out: Path, comparisons: list[tuple[str, str]]) -> None:
    try:
        claims = evaluate_claims(result)
    except ValueError as err:  # e.g. one model only: no claim to test
        print(f"claims not tested: {err}")
    else:
        print(format_claims(claims))
        claims_to_json(claims, out / "claims.json")
    for a, b in comparisons:
        comparison = compare(result, a, b)
        print(comparison.format() + "\n")
        comparison.to_json(out / f"compare_{a}_vs_{b}.json".replace("/", "-").replace(":", "-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", action="append", default=[], help="NAME=DIR, repeat")
    parser.add_argument("--rows", type=int, default=None, help="first N sentences (default: all every cache has)")
    parser.add_argument("--vocab", default="top:512")
    parser.add_argument("--curve", action="store_true")
    parser.add_argument("--train-softmax", default="full", help="full | sampled:K (held-out scoring stays exact)")
    parser.add_argument("--layers", action="append", default=[], help="NAME=0,3,6: probe only these layers, repeat")
    parser.add_argument("--combine", nargs="*", default=[], help="results.json files to join instead of probing")
    parser.add_argument(
        "--rename", action="append", default=[], help="I:OLD=NEW: rename model OLD of the I-th --combine file (from 0)"
    )
    parser.add_argument(
        "--tie-unseen",
        action="store_true",
        help="train the ids no training bag holds as one tied row (exact under the full softmax)",
    )
    parser.add_argument("--compare", action="append", default=[], help="A,B pairs to compare")
    parser.add_argument("--probe", default="auto", help="probe form: auto (default), embedding, linear, unembedding")
    parser.add_argument(
        "--probe-seeds", type=int, default=1, help="probes per layer (their spread enters every interval)"
    )
    parser.add_argument(
        "--probe-memory",
        default=None,
        help="memory per layer group, e.g. 1GiB: smaller groups are saved (resumed) sooner",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    renames = [(int(r.split(":", 1)[0]), *r.split(":", 1)[1].rsplit("=", 1)) for r in args.rename]
    timing = {}
    if args.combine:
        results = [RecoverabilityResult.from_json(p) for p in args.combine]
        for i, old, new in renames:
            results[i] = renamed(results[i], old, new)
        combined, split = RecoverabilityResult.concat(results), None
    else:
        from fastmi.probe.recoverability import recoverability

        caches = {name: ActivationCache.open(d) for name, d in (c.split("=", 1) for c in args.cache)}
        available = min(finished_rows(c) for c in caches.values())
        rows = args.rows or available
        if rows > available:
            raise SystemExit(f"only {available} rows are finished in every cache, not {rows}")
        fingerprints = {c.metadata["corpus_fingerprint"] for c in caches.values()}
        if len(fingerprints) != 1:
            raise SystemExit("the caches were made from different corpora")
        heads = {name: CacheHead(c, rows, name) for name, c in caches.items()}
        split = Split.make(rows, 0.2, 0, corpus_fingerprint=next(iter(heads.values())).metadata["corpus_fingerprint"])
        chosen = {name: [int(v) for v in layers.split(",")] for name, layers in (x.split("=", 1) for x in args.layers)}
        results = []
        for name, head in heads.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            # A whole cache is probed as itself, so that its finished layer groups are saved in it and a
            # rerun resumes them; a head of one is probed through CacheHead (nothing saved).
            result = recoverability(
                caches[name] if rows == caches[name].num_rows else head,
                model=name,
                vocab=args.vocab,
                train_softmax=args.train_softmax,
                train=TrainConfig(tie_unseen=True) if args.tie_unseen else None,
                layers=chosen.get(name),
                split=split,
                curve=(0.125, 0.25, 0.5, 1.0) if args.curve else None,
                probe=args.probe,
                probe_seeds=args.probe_seeds,
                max_memory=parse_bytes(args.probe_memory) if args.probe_memory else None,
                progress=True,
            )
            timing[name] = round(time.perf_counter() - started, 1)
            timing[f"{name}_cpu"] = round(time.process_time() - cpu_started, 1)
            print(f"{name}: probed {rows} sentences x {len(result.table)} layers in {timing[name]} s", flush=True)
            result.to_json(out / "models" / f"{name.replace('/', '-')}.json")
            results.append(result)
        combined = RecoverabilityResult.concat(results)
    write_outputs(combined, out, split)
    print(combined.format_table())
    (out / "timing.json").write_text(json.dumps({"probe_seconds": timing}, indent=2) + "\n")
    if timing:
        layers = {name: sum(str(r["model"]) == name for r in combined.table) for name in heads}
        record_timing(args, rows, layers, timing)
    analyse(combined, out, [tuple(p.split(",", 1)) for p in args.compare])


def record_timing(args, rows: int, layers: dict[str, int], timing: dict) -> None:
    """The probe's settings, layers per model and seconds (wall, and CPU as ``NAME_cpu``) as a history row."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import history

    figures = {
        "rows": rows,
        "vocab": args.vocab,
        "train_softmax": args.train_softmax,
        "tie_unseen": args.tie_unseen,
        "curve": args.curve,
        "probe": args.probe,
        "probe_seeds": args.probe_seeds,
        "layers_probed": layers,
        "probe_seconds": timing,
    }
    history.record("findings_run", figures, source="bench/findings_run.py")


if __name__ == "__main__":
    main()
