"""One probe run over a cache, saved as it finishes and skipped when saved, for the bench scripts that
compare probe settings run by run (bench/probe_family.py, bench/probe_batch.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from fastmi.activations.cache import ActivationCache
from fastmi.probe.config import ProbeConfig
from fastmi.probe.recoverability import assemble, prepare, probe_group


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every saved-run bench takes: where runs go, which caches, which layers, group size."""
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", action="append", required=True, help="NAME=DIR, repeat")
    parser.add_argument("--layers", action="append", default=[], help="NAME=0,3,6: only these layers, repeat")
    parser.add_argument(
        "--probe-memory",
        type=int,
        default=None,
        help="bytes per layer group (smaller: saved sooner; a group stops when all its layers are stale, "
        "so one layer a group measures each layer's own early stopping)",
    )


def caches_of(args: argparse.Namespace) -> Iterator[tuple[str, ActivationCache, list[int] | None, Path]]:
    """Per ``--cache NAME=DIR``: its name, the cache, its ``--layers`` (None: all) and ``--out``, made."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = {name: [int(v) for v in layers.split(",")] for name, layers in (x.split("=", 1) for x in args.layers)}
    for name, directory in (c.split("=", 1) for c in args.cache):
        yield name, ActivationCache.open(directory), chosen.get(name), out


def run_saved(cache, name: str, config: ProbeConfig, setting: str, layers, out: Path) -> dict:
    """``config`` over ``cache`` saved to OUT/<name>-<setting>.json; returns its record (CPU seconds,
    or None where it resumed finished layer groups, which :func:`fastmi.recoverability` saves)."""
    path = out / f"{name}-{setting}.json"
    timing_path = path.with_suffix(".timing.json")
    if path.is_file():
        return {**json.loads(timing_path.read_text()), "reused": True}
    probe_run = prepare(cache, config, layers=layers, model=name, progress=True)
    pending = probe_run.store.pending(probe_run.groups)
    resumed = len(pending) < len(probe_run.groups)
    started = time.process_time()
    for group in pending:
        probe_group(probe_run, group)
    cpu = time.process_time() - started
    result = assemble(probe_run)
    result.to_json(path)
    record = {"setting": setting, "cpu_seconds": None if resumed else round(cpu, 1), "layers": len(result.table)}
    if resumed:
        record["note"] = "resumed from saved layer groups: its CPU time is not the whole run's"
    timing_path.write_text(json.dumps(record) + "\n")
    return record


def add_bound_changes(per_setting: dict[str, dict[int, dict]], baseline: str) -> None:
    """Each layer row of each setting gains ``bound_change_bits``: its bound minus ``baseline``'s."""
    base = per_setting[baseline]
    for rows in per_setting.values():
        for layer, row in rows.items():
            row["bound_change_bits"] = round(row["bound_bits"] - base[layer]["bound_bits"], 4)


def record_new(bench: str, figures: dict, timings: dict[str, dict], source: str) -> None:
    """``figures`` as a history row of ``bench`` (bench/history.py), unless every run was reused
    (then it was recorded when the runs were made)."""
    if all(t.get("reused") for t in timings.values()):
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import history

    history.record(bench, figures, source=source)
