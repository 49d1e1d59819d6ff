"""The alphabet map's coarseness: the bound under each vocab setting, and what vocab="auto" chooses.

Merging the ids a probe cannot learn into "other" can raise the valid bound on I(T; z) (docs/theory.md
§7, "min:C").  This runs the same probe (default ``auto``, one seed, no curve) over the same split and
layers under each setting of ``--vocabs`` (the first is the baseline) and reports per layer the bound,
its lcb, H(f(T)), the fraction of H(f(T)) and the change against the baseline; for ``auto`` also the map
it chose and every trial's validation bounds; per run its CPU seconds.  With two models, the last
section gives the first minus the second model's fraction at the relative depths both have, per
setting: how much of a comparison depends on the map.  Runs are saved as they finish
(OUT/<model>-<vocab>.json) and skipped when there.

    python bench/alphabet_choice.py --out runs/alphabet --cache minilm=runs/cache1k/minilm \
        --cache smollm2=runs/cache1k/smollm2 --layers smollm2=0,5,10,15,20,25,30 --vocabs observed,min:2,auto

Appends one row per model to bench/results/alphabet_choice.jsonl (bench/history.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from fastmi.probe.config import ProbeConfig
from fastmi.results.result import RecoverabilityResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_run import add_bound_changes, add_run_arguments, caches_of, record_new, run_saved  # noqa: E402  (bench/ is not a package)


def per_layer(result: RecoverabilityResult) -> dict[int, dict]:
    return {
        row["layer"]: {
            "rel_depth": round(row["rel_depth"], 4),
            "vocab": row["vocab"],
            "M": row["M"],
            "H_f_T_bits": round(row["H_T"], 4),
            "bound_bits": round(row["variational_bits"], 4),
            "lcb_bits": round(row["variational_lcb"], 4),
            "fraction": round(row["variational_bits"] / row["H_T"], 4) if row["H_T"] > 0 else 0.0,
        }
        for row in result.table
    }


def depth_differences(first: dict[int, dict], second: dict[int, dict]) -> dict[str, float]:
    """first - second model's fraction at each relative depth both have (rounded to 0.01)."""
    by_depth = {round(row["rel_depth"], 2): row["fraction"] for row in second.values()}
    return {
        f"{round(row['rel_depth'], 2):.2f}": round(row["fraction"] - by_depth[round(row["rel_depth"], 2)], 4)
        for row in first.values()
        if round(row["rel_depth"], 2) in by_depth
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--vocabs", default="observed,auto", help="comma-separated; the first is the baseline")
    parser.add_argument("--probe", default="auto")
    args = parser.parse_args()
    vocabs = args.vocabs.split(",")
    per_model = {}
    for name, cache, layers_of_cache, out in caches_of(args):
        timings, layers, choices = {}, {}, {}
        for vocab in vocabs:
            config = ProbeConfig.resolve(
                ProbeConfig(), {"vocab": vocab, "probe": args.probe, "max_memory": args.probe_memory}, "alphabet"
            )
            setting = re.sub(r"[^A-Za-z0-9]+", "", vocab)
            timings[vocab] = run_saved(cache, name, config, setting, layers_of_cache, out)
            result = RecoverabilityResult.from_json(out / f"{name}-{setting}.json")
            layers[vocab] = per_layer(result)
            if "vocab_choice" in result.config:
                choices[vocab] = result.config["vocab_choice"]
        add_bound_changes(layers, vocabs[0])
        figures = {
            "model": name,
            "probe": args.probe,
            "n_train": result.table[0]["n_train"],
            "per_vocab": layers,
            "choices": choices,
            "cpu_seconds": {v: t.get("cpu_seconds") for v, t in timings.items()},
        }
        per_model[name] = layers
        (out / f"{name}-summary.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        record_new("alphabet_choice", figures, timings, "bench/alphabet_choice.py")
    if len(per_model) == 2:
        (first, a), (second, b) = per_model.items()
        gaps = {vocab: depth_differences(a[vocab], b[vocab]) for vocab in vocabs}
        print(json.dumps({f"{first} - {second} fraction by relative depth": gaps}, indent=2))
        (Path(args.out) / "differences.json").write_text(json.dumps(gaps, indent=2) + "\n")


if __name__ == "__main__":
    main()
