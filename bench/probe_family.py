"""The default probe against the one it replaced, on real caches: tighter, flatter, faster?

For each cache, two runs over the same split and layers, observed alphabet, sample-size curves at
1/8, 1/4, 1/2 and all of the training sentences: ``before`` (the linear probe from W = 0, every fit
cold: the default until the embedding probe) and ``after`` (today's default, ``ProbeConfig()``).
Per layer it reports, from the two runs' curves:

* tighter: the bound at the full n_train, after - before (held to be >= -0.02 bit, the seed noise),
  and whether after's bound at 1/4 of n_train reaches before's at the full n_train;
* flatter: the rise of the last doubling, after and before, and the data_limited flags;
* faster: each run's CPU seconds, and their ratio.

Each run is saved as it finishes (OUT/<model>-<setting>.json) and skipped when it is there; a run
cut short resumes its finished layer groups (:func:`fastmi.recoverability` saves each), and then
says so in place of a CPU time.  Usage:

    python bench/probe_family.py --out runs/family --cache minilm=runs/cache/minilm \\
        --cache smollm2=runs/cache/smollm2 --layers smollm2=0,5,10,15,20,25,30 [--setting after]

Appends one row per model to bench/results/probe_family.jsonl (bench/history.py) once both of its
runs are there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastmi.activations.cache import ActivationCache
from fastmi.probe.config import ProbeConfig
from fastmi.results.result import RecoverabilityResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_run import add_run_arguments, caches_of, record_new, run_saved  # noqa: E402  (bench/ is not a package)

SETTINGS = {
    "before": ProbeConfig(probe="linear"),
    "after": ProbeConfig(),
}
CURVE = (0.125, 0.25, 0.5, 1.0)
SEED_NOISE_BITS = 0.02


def run(cache: ActivationCache, name: str, setting: str, layers, out: Path, max_memory: int | None) -> dict:
    config = ProbeConfig.resolve(SETTINGS[setting], {"curve": CURVE, "max_memory": max_memory}, "probe_family")
    return run_saved(cache, name, config, setting, layers, out)


def by_layer(result: RecoverabilityResult) -> dict[int, dict]:
    """Per layer: its table row, its curve's variational bits by n_train and its full fit's training log."""
    curves: dict[int, dict[int, float]] = {}
    for point in result.curves:
        curves.setdefault(point["layer"], {})[point["n_train"]] = point["variational_bits"]
    training = result.config["training"]
    return {
        row["layer"]: {"row": row, "curve": curves[row["layer"]], "log": training[str(row["layer"])]}
        for row in result.table
    }


def compare_runs(before: RecoverabilityResult, after: RecoverabilityResult) -> list[dict]:
    """The per-layer figures of the module docstring."""
    rows = []
    old, new = by_layer(before), by_layer(after)
    for layer in sorted(old):
        n = sorted(old[layer]["curve"])
        quarter, full = n[1], n[-1]
        rise = {k: v["curve"][full] - v["curve"][n[-2]] for k, v in (("before", old[layer]), ("after", new[layer]))}
        rows.append(
            {
                "layer": layer,
                "before_bits": round(old[layer]["curve"][full], 4),
                "after_bits": round(new[layer]["curve"][full], 4),
                "gain_bits": round(new[layer]["curve"][full] - old[layer]["curve"][full], 4),
                "after_at_quarter_bits": round(new[layer]["curve"][quarter], 4),
                "quarter_reaches_before_full": new[layer]["curve"][quarter] >= old[layer]["curve"][full],
                "last_doubling_before": round(rise["before"], 4),
                "last_doubling_after": round(rise["after"], 4),
                "data_limited_before": bool(old[layer]["row"]["data_limited"]),
                "data_limited_after": bool(new[layer]["row"]["data_limited"]),
                "epochs_before": old[layer]["log"]["epochs_run"],
                "epochs_after": new[layer]["log"]["epochs_run"],
                "start_after": new[layer]["log"]["start"],
                "form_after": new[layer]["row"]["probe"],
            }
        )
    return rows


def plot_curves(before: RecoverabilityResult, after: RecoverabilityResult, name: str, path: Path) -> Path:
    """One panel per layer: the variational bound against n_train (log scale), before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old, new = by_layer(before), by_layer(after)
    layers = sorted(old)
    fig, axes = plt.subplots(1, len(layers), figsize=(2.2 * len(layers), 2.6), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for label, runs, style in (("before (linear)", old, "o--"), ("after (default)", new, "s-")):
            n = sorted(runs[layer]["curve"])
            ax.plot(n, [runs[layer]["curve"][k] for k in n], style, label=label, markersize=3)
        ax.set_xscale("log", base=2)
        ax.set_title(f"layer {layer}: {new[layer]['row']['probe']}", fontsize=8)
        ax.set_xlabel("training sentences", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("variational bound (bits)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{name}: held-out bound against training sentences, form kept by 'auto' per layer", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(rows: list[dict], timings: dict[str, dict]) -> dict:
    cpu = {k: t["cpu_seconds"] for k, t in timings.items()}  # (a reused run's CPU time is its own record's)
    return {
        "layers": [r["layer"] for r in rows],
        "tighter_at_full_n": all(r["gain_bits"] >= -SEED_NOISE_BITS for r in rows),
        "quarter_reaches_before_full": sum(r["quarter_reaches_before_full"] for r in rows),
        "flatter": all(r["last_doubling_after"] < r["last_doubling_before"] for r in rows),
        "data_limited_before": sum(r["data_limited_before"] for r in rows),
        "data_limited_after": sum(r["data_limited_after"] for r in rows),
        "forms_after": {form: sum(r["form_after"] == form for r in rows) for form in {r["form_after"] for r in rows}},
        "cpu_seconds": cpu,
        "cpu_ratio_after_over_before": None if None in cpu.values() else round(cpu["after"] / cpu["before"], 3),
        "per_layer": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--setting", choices=sorted(SETTINGS), action="append", help="run only these (default: both)")
    parser.add_argument("--plot", help="a folder for <model>-curves.png: each layer's curves, before and after")
    args = parser.parse_args()
    for name, cache, layers_of_cache, out in caches_of(args):
        timings = {s: run(cache, name, s, layers_of_cache, out, args.probe_memory) for s in args.setting or SETTINGS}
        if set(timings) != set(SETTINGS):
            continue
        results = {s: RecoverabilityResult.from_json(out / f"{name}-{s}.json") for s in SETTINGS}
        figures = {
            "model": name,
            "rows": cache.num_rows,
            **summary(compare_runs(results["before"], results["after"]), timings),
        }
        (out / f"{name}-summary.json").write_text(json.dumps(figures, indent=2) + "\n")
        if args.plot:
            Path(args.plot).mkdir(parents=True, exist_ok=True)
            png = Path(args.plot) / f"{name}-curves.png"
            print("wrote", plot_curves(results["before"], results["after"], name, png))
        print(json.dumps({k: v for k, v in figures.items() if k != "per_layer"}, indent=2))
        record_new("probe_family", figures, timings, "bench/probe_family.py")


if __name__ == "__main__":
    main()
