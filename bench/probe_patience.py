"""Early stopping's patience and the step on a plateau: does a probe stopped after P epochs without
gain end where a longer patience, or a step that drops on a plateau, would take it, and do its seeds
agree?

In the 10,000-sentence findings (docs/findings.md, the re-run over ``observed``) the three probe
seeds of SmolLM2's middle layers stopped at best epochs from 14 to 34 and their validation
cross-entropies differed by up to 0.13 bit: a seed that met a plateau of 3 epochs (the default
patience) stopped there, one that did not went on.  This runs the same probe in each stopping
setting over the same split, layers and alphabet (default ``observed``), three seeds, no curve, and
reports per layer the bound (seed mean), the seeds' spread and best epochs, and per run its CPU
seconds.  A setting is ``p<P>`` (patience P, constant step), then optionally ``-lr<LR>`` (the probe's
step size, default the default's) and ``-f<F>`` (each epoch without gain multiplies that layer's
step by F: ``TrainConfig.plateau_factor``), as in ``p3-lr0.1-f0.5``.  Runs are
saved as they finish (OUT/<model>-<setting>.json) and skipped when there.

    python bench/probe_patience.py --out runs/patience --cache smollm2=runs/cache/smollm2 \
        --layers smollm2=12,13,15,18 --probe unembedding --settings p3,p6,p3-f0.5 --probe-memory 400000000

Appends one row per model to bench/results/probe_patience.jsonl (bench/history.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

from fastmi.probe.config import ProbeConfig
from fastmi.results.result import RecoverabilityResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_run import add_bound_changes, add_run_arguments, caches_of, record_new, run_saved  # noqa: E402  (bench/ is not a package)


def parse_setting(text: str) -> dict:
    """``p6`` -> {"patience": 6}; ``p3-lr0.1-f0.5`` -> {"patience": 3, "lr": 0.1, "plateau_factor": 0.5}."""
    match = re.fullmatch(r"p(\d+)(?:-lr([0-9.]+))?(?:-f([0-9.]+))?", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"a setting is p<patience>[-lr<step>][-f<factor>], got {text!r}")
    train = {"patience": int(match[1])}
    if match[2]:
        train["lr"] = float(match[2])
    if match[3]:
        train["plateau_factor"] = float(match[3])
    return train


def config_for(setting: str, probe: str, vocab: str, seeds: int, max_memory: int | None) -> ProbeConfig:
    base = ProbeConfig()
    train = replace(base.train, **parse_setting(setting))
    overrides = {"vocab": vocab, "probe": probe, "probe_seeds": seeds, "train": train, "max_memory": max_memory}
    return ProbeConfig.resolve(base, overrides, "probe_patience")


def per_layer(result: RecoverabilityResult) -> dict[int, dict]:
    training = result.config["training"]
    layers = {}
    for row in result.table:
        log = training[str(row["layer"])]
        seeds = log.get("seeds", [])
        layers[row["layer"]] = {
            "bound_bits": round(row["variational_bits"], 4),
            "lcb_bits": round(row["variational_lcb"], 4),
            "seed_sd_bits": round(row.get("variational_seed_sd") or 0.0, 4),
            "best_epochs": [s["best_epoch"] for s in seeds] or [log["best_epoch"]],
            "validation_ce_bits": [round(s["validation_ce_bits"], 4) for s in seeds],
        }
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument(
        "--settings", default="p3,p6", help="comma-separated p<P> or p<P>-f<F>; the first is the baseline"
    )
    parser.add_argument("--probe", default="auto")
    parser.add_argument("--vocab", default="observed")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    settings = args.settings.split(",")
    for setting in settings:
        parse_setting(setting)
    for name, cache, layers_of_cache, out in caches_of(args):
        timings, layers = {}, {}
        for setting in settings:
            config = config_for(setting, args.probe, args.vocab, args.seeds, args.probe_memory)
            timings[setting] = run_saved(cache, name, config, setting, layers_of_cache, out)
            layers[setting] = per_layer(RecoverabilityResult.from_json(out / f"{name}-{setting}.json"))
        add_bound_changes(layers, settings[0])
        figures = {
            "model": name,
            "probe": args.probe,
            "vocab": args.vocab,
            "seeds": args.seeds,
            "per_setting": layers,
            "cpu_seconds": {s: t.get("cpu_seconds") for s, t in timings.items()},
        }
        (out / f"{name}-summary.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        record_new("probe_patience", figures, timings, "bench/probe_patience.py")


if __name__ == "__main__":
    main()
