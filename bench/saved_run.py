"""One probe run over a cache, saved as it finishes and skipped when saved, for the bench scripts that
compare probe settings run by run (bench/probe_family.py, bench/probe_batch.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fastmi.probe.config import ProbeConfig
from fastmi.probe.recoverability import assemble, prepare, probe_group


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


def record_new(bench: str, figures: dict, timings: dict[str, dict], source: str) -> None:
    """``figures`` as a history row of ``bench`` (bench/history.py), unless every run was reused
    (then it was recorded when the runs were made)."""
    if all(t.get("reused") for t in timings.values()):
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import history

    history.record(bench, figures, source=source)
