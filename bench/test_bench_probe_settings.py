"""CPU benchmark: the probe settings for large vocabularies, against the full-softmax linear probe.

    python -m pytest bench/test_bench_probe_settings.py --benchmark-only -s

On the demo caches (``minilm``: BERT, V = 30,522, 7 layers; ``smollm2``: V = 49,152, 31 layers;
1000 sentences, mean pooling, max_length 48) with ``vocab="full"``, one run times a converged probe
of every layer (the whole ``fastmi.recoverability`` call: training with early stopping, exact
validation, held-out scoring and bounds) for each setting of :data:`SETTINGS`, the first being the
baseline, and reports per setting: seconds (wall, and CPU time of the process, the fairer figure on
a machine shared with other work), speed-up over the baseline, the variational bound of
every layer (and H(T) - CE before clamping at 0) and the largest difference from the baseline's,
compared before clamping (the clamped bounds of a vacuous layer are all 0 and would hide any
difference).  The headline is the fastest setting (by CPU time)
whose bound is within :data:`TOLERANCE_BITS` of the baseline at every layer.

Knobs (environment): ``FASTMI_BENCH_CACHES`` a folder holding prebuilt ``minilm/`` and ``smollm2/``
caches (made with this fastmi, so they hold the output embedding; default: extract them into a
temporary folder first, not timed); ``FASTMI_BENCH_LAYERS`` e.g. ``smollm2=0,10,20,30`` to time a
subset of layers (the full-vocabulary baseline of all 31 smollm2 layers takes tens of minutes on two
cores); ``FASTMI_BENCH_OUT`` a JSON file the figures are also written to.

Script mode, for long runs in the background (one setting, resumable by its output file)::

    python bench/test_bench_probe_settings.py CACHE_DIR SETTING OUT.json [--layers 0,10,20]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

import fastmi
from fastmi.probe.training import TrainConfig

#: (name, probe, train_softmax, TrainConfig overrides); the first is the baseline.  The issue's four
#: settings, plus sampled:2048 (the smallest K found within the tolerance on minilm) and the full
#: softmax with the ids no training bag holds tied into one row (exact: the same probe, cheaper).
SETTINGS = (
    ("full", "linear", "full", {}),
    ("full, unseen ids tied", "linear", "full", {"tie_unseen": True}),
    ("sampled:4096", "linear", "sampled:4096", {}),
    ("sampled:2048", "linear", "sampled:2048", {}),
    ("unembedding", "unembedding", "full", {}),
    ("unembedding+sampled:4096", "unembedding", "sampled:4096", {}),
)
TOLERANCE_BITS = 0.02
VOCAB = "full"


def measure(cache, probe: str, train_softmax: str, layers=None, overrides=None) -> dict:
    """Seconds (wall and CPU) to a converged probe of ``layers`` and its per-layer variational bounds."""
    train = TrainConfig(**(overrides or {}))
    # A fresh checkpoint folder: a probe group saved by an earlier run would be loaded, not timed.
    with tempfile.TemporaryDirectory() as checkpoints:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fastmi.recoverability(
            cache,
            vocab=VOCAB,
            probe=probe,
            train_softmax=train_softmax,
            layers=layers,
            train=train,
            checkpoint_dir=checkpoints,
            progress=False,
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "layers": [row["layer"] for row in result.table],
        "variational_bits": [row["variational_bits"] for row in result.table],
        # H(T) - CE before clamping at 0: with vocab="full" on 1000 sentences the clamped bound is 0
        # at many layers, and differences between settings show only here.
        "unclamped_bits": [row["H_T"] - row["ce_bits"] for row in result.table],
        "ce_bits": [row["ce_bits"] for row in result.table],
        "variational_lcb": [row["variational_lcb"] for row in result.table],
        "epochs_run": {layer: log["epochs_run"] for layer, log in result.config["training"].items()},
        "start": {layer: log["start"] for layer, log in result.config["training"].items()},
        "alphabet_size": result.config["alphabet_size"],
        "train": result.config["train"],
    }


def compare(measured: dict[str, dict]) -> dict:
    """Speed-ups over the first setting, largest bound differences, and the headline setting."""
    base_name = SETTINGS[0][0]
    base = measured[base_name]
    report: dict = {"settings": {}}
    for name, figures in measured.items():
        signed = [a - b for a, b in zip(figures["unclamped_bits"], base["unclamped_bits"])]
        diffs = [abs(d) for d in signed]
        report["settings"][name] = {
            "seconds": figures["seconds"],
            "cpu_seconds": figures["cpu_seconds"],
            "speedup": base["seconds"] / figures["seconds"],
            "cpu_speedup": base["cpu_seconds"] / figures["cpu_seconds"],
            "max_abs_difference_bits": max(diffs),
            "within_tolerance": max(diffs) <= TOLERANCE_BITS,
            # A setting may also end *above* the baseline (a better decoder: still a valid bound).
            "largest_loss_bits": max(0.0, -min(signed)),
            "no_worse": -min(signed) <= TOLERANCE_BITS,
        }
    eligible = [n for n, r in report["settings"].items() if r["within_tolerance"] and n != base_name]
    # Ranked by CPU time: on a shared machine wall time measures the other work as much as this.
    best = max(eligible, key=lambda n: report["settings"][n]["cpu_speedup"], default=None)
    report["fastest_within_tolerance"] = best
    report["its_speedup"] = None if best is None else report["settings"][best]["cpu_speedup"]
    no_worse = [n for n, r in report["settings"].items() if r["no_worse"] and n != base_name]
    best = max(no_worse, key=lambda n: report["settings"][n]["cpu_speedup"], default=None)
    report["fastest_no_worse"] = best
    report["its_no_worse_speedup"] = None if best is None else report["settings"][best]["cpu_speedup"]
    return report


def _layers_for(model: str):
    for part in filter(None, os.environ.get("FASTMI_BENCH_LAYERS", "").split(";")):
        name, _, values = part.partition("=")
        if name.strip() == model:
            return [int(v) for v in values.split(",")]
    return None


@pytest.fixture(scope="module")
def demo_caches(tmp_path_factory):
    from fastmi.commands.demo import DEMO_MAX_LENGTH, DEMO_SENTENCES

    prebuilt = os.environ.get("FASTMI_BENCH_CACHES")
    if prebuilt:
        return {name: fastmi.ActivationCache.open(Path(prebuilt) / name) for name in ("minilm", "smollm2")}
    root = tmp_path_factory.mktemp("probe-settings-bench")
    corpus = fastmi.Corpus.demo(DEMO_SENTENCES)
    return {
        name: fastmi.extract(name, corpus, cache_dir=root / name, max_length=DEMO_MAX_LENGTH, progress=False)
        for name in ("minilm", "smollm2")
    }


@pytest.mark.parametrize("model", ["minilm", "smollm2"])
def test_probe_settings(benchmark, demo_caches, model):
    cache = demo_caches[model]
    layers = _layers_for(model)
    measured: dict[str, dict] = {}

    def all_settings():
        for name, probe, train_softmax, overrides in SETTINGS:
            measured[name] = measure(cache, probe, train_softmax, layers, overrides)

    benchmark.pedantic(all_settings, rounds=1, iterations=1)
    report = compare(measured) | {"model": model, "layers": measured[SETTINGS[0][0]]["layers"], "measured": measured}
    benchmark.extra_info.update(report)
    out = os.environ.get("FASTMI_BENCH_OUT")
    if out:
        previous = json.loads(Path(out).read_text()) if Path(out).exists() else {}
        Path(out).write_text(json.dumps(previous | {model: report}, indent=1))
    print(f"\n{model} (layers {report['layers']}, M = {measured[SETTINGS[0][0]]['alphabet_size']}):")
    for name, figures in report["settings"].items():
        print(
            f"  {name:26s} {figures['seconds']:8.1f} s  x{figures['speedup']:5.2f}  "
            f"(CPU {figures['cpu_seconds']:8.1f} s  x{figures['cpu_speedup']:5.2f})  "
            f"max |diff| {figures['max_abs_difference_bits']:.4f} bit"
        )
    print(
        f"  fastest (CPU) within {TOLERANCE_BITS} bit at every layer: {report['fastest_within_tolerance']} "
        f"(x{report['its_speedup'] or 0:.2f}); fastest never more than {TOLERANCE_BITS} bit below: "
        f"{report['fastest_no_worse']} (x{report['its_no_worse_speedup'] or 0:.2f})"
    )
    assert set(report["settings"]) == {name for name, *_ in SETTINGS}
    assert all(len(m["variational_bits"]) == len(report["layers"]) for m in measured.values())


if __name__ == "__main__":
    cache_dir, setting, out_path = sys.argv[1:4]
    chosen = None
    if "--layers" in sys.argv:
        chosen = [int(v) for v in sys.argv[sys.argv.index("--layers") + 1].split(",")]
    probe, train_softmax, overrides = {name: rest for name, *rest in SETTINGS}.get(setting, ("linear", setting, {}))
    if setting.startswith("unembedding+"):
        probe, train_softmax = "unembedding", setting.split("+", 1)[1]
    if not Path(out_path).exists():
        figures = measure(fastmi.ActivationCache.open(cache_dir), probe, train_softmax, chosen, overrides)
        figures |= {"setting": setting, "probe": probe, "train_softmax": train_softmax}
        Path(out_path).write_text(json.dumps(figures, indent=1))
    print(Path(out_path).read_text())
