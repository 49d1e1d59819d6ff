"""The probe at larger batches: do its bounds and its epochs stay where they are at the default 256?

On a GPU at large shapes a probe step of 256 rows is bound by AdamW's pass over W, not by its
matmuls, so the planner names a larger, compute-bound batch (``fastmi plan``: "batch ... run with
--probe-batch-size B"; fastmi.planning.probe_cost.compute_bound_batch).  That is only worth taking if
the bounds stay within the seed noise and early stopping does not need many more epochs; both can be
measured on a CPU, where a step's cost is proportional to its rows (so the CPU seconds below
say how the epoch count moves, not how a GPU's time does).

For each cache, one run per batch over the same split, layers and alphabet (default ``observed``),
the default probe, one seed, no curve.  Per layer: the variational bound, its difference from the
256-row run's, the epochs run and the best epoch; per run its CPU seconds.  ``--lr-scaling sqrt``
also runs each larger batch at lr x sqrt(B / 256), Adam's usual scaling.  Runs are saved as they
finish (OUT/<model>-b<B>[-sqrt].json) and skipped when there; a cut run resumes its layer groups.

    python bench/probe_batch.py --out runs/batch --cache minilm=runs/cache/minilm --layers minilm=0,3,6

Appends one row per model to bench/results/probe_batch.jsonl (bench/history.py) once its runs are there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from fastmi.probe.config import ProbeConfig
from fastmi.results.result import RecoverabilityResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_run import add_run_arguments, caches_of, record_new, run_saved  # noqa: E402  (bench/ is not a package)

BASE_BATCH = 256  # TrainConfig's default
SEED_NOISE_BITS = 0.02  # the bound's spread between probe seeds at 10,000 sentences (docs/performance.md)


def setting_name(batch: int, sqrt_lr: bool) -> str:
    return f"b{batch}" + ("-sqrt" if sqrt_lr else "")


def config_for(batch: int, sqrt_lr: bool, vocab: str, max_memory: int | None) -> ProbeConfig:
    base = ProbeConfig()
    lr = base.train.lr * (math.sqrt(batch / BASE_BATCH) if sqrt_lr else 1.0)
    train = replace(base.train, batch_size=batch, lr=lr)
    return ProbeConfig.resolve(base, {"vocab": vocab, "train": train, "max_memory": max_memory}, "probe_batch")


def compare(results: dict[str, RecoverabilityResult], timings: dict[str, dict]) -> dict:
    """Per setting and layer: the bound, its change from the base batch, epochs run and best epoch."""
    base = setting_name(BASE_BATCH, False)

    def per_layer(result):
        training = result.config["training"]
        return {row["layer"]: (row, training[str(row["layer"])]) for row in result.table}

    reference = per_layer(results[base])
    settings = {}
    for setting, result in results.items():
        layers = []
        for layer, (row, log) in sorted(per_layer(result).items()):
            change = row["variational_bits"] - reference[layer][0]["variational_bits"]
            layers.append(
                {
                    "layer": layer,
                    "form": row["probe"],
                    "variational_bits": round(row["variational_bits"], 4),
                    "change_bits": round(change, 4),
                    "epochs_run": log["epochs_run"],
                    "best_epoch": log["best_epoch"],
                }
            )
        cpu = timings[setting].get("cpu_seconds")
        base_cpu = timings[base].get("cpu_seconds")
        settings[setting] = {
            "within_seed_noise": all(abs(r["change_bits"]) <= SEED_NOISE_BITS for r in layers),
            "largest_change_bits": max((r["change_bits"] for r in layers), key=abs),
            "cpu_seconds": cpu,
            "cpu_ratio_to_base": round(cpu / base_cpu, 3) if cpu and base_cpu else None,
            "per_layer": layers,
        }
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--batches", default="256,1024,2048", help="comma-separated; the first must be 256")
    parser.add_argument("--lr-scaling", choices=("none", "sqrt", "both"), default="none")
    parser.add_argument("--vocab", default="observed")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if batches[0] != BASE_BATCH:
        raise SystemExit(f"--batches must start with the default, {BASE_BATCH}")
    scalings = {"none": (False,), "sqrt": (True,), "both": (False, True)}[args.lr_scaling]
    settings = [(BASE_BATCH, False)] + [(b, s) for b in batches[1:] for s in scalings]
    for name, cache, layers_of_cache, out in caches_of(args):
        timings = {}
        for batch, sqrt_lr in settings:
            setting = setting_name(batch, sqrt_lr)
            config = config_for(batch, sqrt_lr, args.vocab, args.probe_memory)
            timings[setting] = run_saved(cache, name, config, setting, layers_of_cache, out)
        results = {s: RecoverabilityResult.from_json(out / f"{name}-{s}.json") for s in timings}
        figures = {"model": name, "rows": cache.num_rows, "vocab": args.vocab, "settings": compare(results, timings)}
        (out / f"{name}-summary.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
        record_new("probe_batch", figures, timings, "bench/probe_batch.py")


if __name__ == "__main__":
    main()
