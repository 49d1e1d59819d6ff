"""Every pytest-benchmark suite here appends one row per run to its history (bench/history.py).

The row of ``bench/test_bench_NAME.py`` goes to ``bench/results/NAME.jsonl``; its figures hold, per
test that ran a benchmark, pytest-benchmark's times (seconds) and what the test put in its
``extra_info`` (the ratios each suite computes against its baseline).  A run with
``--benchmark-disable`` times nothing and writes no row.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import history  # noqa: E402

# What a bench makes between runs (activation caches, dequantised models, the weight-hash index) goes
# to a temporary home, never the user's ~/.cache/fastmi; FASTMI_BENCH_HOME keeps one across runs.
if "FASTMI_BENCH_HOME" in os.environ:
    os.environ["FASTMI_HOME"] = os.environ["FASTMI_BENCH_HOME"]
else:
    _home = tempfile.mkdtemp(prefix="fastmi-bench-home-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ["FASTMI_HOME"] = _home

TIMES = ("min", "median", "mean", "max", "stddev")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.bench_outcome = report.outcome  # read when the test's benchmark is recorded


@pytest.fixture(scope="module", autouse=True)
def bench_history(request):
    """The module's figures, filled by each test, appended as one row when the module is done."""
    figures: dict[str, dict] = {}
    yield figures
    path = Path(request.module.__file__)
    if figures and path.name.startswith("test_bench_"):
        history.record(path.stem.removeprefix("test_bench_"), figures, source=f"bench/{path.name}")


@pytest.fixture(autouse=True)
def _benchmark_figures(request, bench_history):
    yield
    benchmark = request.node.funcargs.get("benchmark")
    if benchmark is None or benchmark.disabled or benchmark.stats is None:
        return
    stats = benchmark.stats.stats
    figures = {"outcome": getattr(request.node, "bench_outcome", None), "group": benchmark.group}
    if stats.data:  # empty when the timed function raised: the row says the test failed, with no times
        figures |= {"rounds": stats.rounds, **{f"{name}_s": getattr(stats, name) for name in TIMES}}
    bench_history[request.node.name] = figures | benchmark.extra_info
