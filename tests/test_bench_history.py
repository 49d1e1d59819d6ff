"""bench/history.py: every bench run appends a row (commit, date, machine, load, figures) to
bench/results/<bench>.jsonl, never overwrites one, and no row holds a path of the machine that ran it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ROW_KEYS = {"bench", "source", "commit", "dirty", "date", "machine", "load", "figures"}
# An absolute path anywhere in a string: a slash that starts no word's tail, then at least one folder.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>/:-])/(?:[\w.+@-]+/)+")


@pytest.fixture(scope="module")
def history():
    spec = importlib.util.spec_from_file_location("bench_history", REPO / "bench" / "history.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strings(value):
    """Every key and string value in a row, however deep."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def local_paths(row: dict) -> list[str]:
    folders = [str(REPO), str(Path.home()), sys.prefix, os.path.realpath("/tmp")]
    return [s for s in strings(row) if ABSOLUTE_PATH.search(s) or any(f in s for f in folders if len(f) > 1)]


def test_a_row_says_commit_date_machine_load_and_figures(history, tmp_path):
    row = history.record("demo", {"seconds": 7.5, "ratio": (1.5, 2)}, source="bench/x.py", results=tmp_path)
    assert ROW_KEYS <= set(row)
    assert re.fullmatch(r"[0-9a-f]{40}", row["commit"]) and isinstance(row["dirty"], bool)  # tests run in a checkout
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["date"])  # UTC
    assert row["machine"]["cores"] == os.cpu_count() and row["machine"]["torch"] and row["machine"]["cpu"]
    assert set(row["load"]) == {"1m", "5m", "15m"}
    assert row["figures"] == {"seconds": 7.5, "ratio": [1.5, 2]}  # what the file holds: JSON, tuples as lists
    assert json.loads((tmp_path / "demo.jsonl").read_text()) == row


def test_rows_are_appended_never_overwritten(history, tmp_path):
    first = history.record("extract", {"ratio": 1.1}, results=tmp_path)
    second = history.record("extract", {"ratio": 1.2}, results=tmp_path)
    history.record("probe", {"ratio": 3.0}, results=tmp_path)
    lines = (tmp_path / "extract.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first, second] == history.read("extract", tmp_path)
    assert len(history.read("probe", tmp_path)) == 1


def test_no_row_holds_a_path_of_this_machine(history, tmp_path):
    figures = {
        str(tmp_path / "cache" / "minilm"): {"seconds": 1.0},  # a key, as the precision snapshot had
        "cache": str(REPO / "bench" / "results"),
        "error": f"FileNotFoundError: {tmp_path}/x.json at {sys.executable}",
        "home": str(Path.home() / ".cache" / "fastmi"),
        "elsewhere": ["/data/runs/cache/smollm2", "/mnt/x/y.json"],
        "not paths": ["1 GB/s", "a/b", "https://nvidia.com/en-us/data-center/h100/"],
    }
    row = history.record("paths", figures, results=tmp_path)
    assert not local_paths(row), local_paths(row)
    assert row["figures"]["cache"] == "bench/results"  # inside the repository: relative
    assert row["figures"]["elsewhere"] == ["smollm2", "y.json"]
    assert row["figures"]["not paths"] == figures["not paths"]


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.jsonl")), ids=lambda p: p.name)
def test_the_kept_histories_are_rows_without_local_paths(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows
    for row in rows:
        assert ROW_KEYS <= set(row) and row["bench"] == path.stem
        assert row["commit"] or row["commit_note"].startswith("unknown")  # an unknown commit says so
        assert not local_paths(row), local_paths(row)
    assert not list(RESULTS.glob("*.json")), "bench/results holds histories (.jsonl) only, no snapshots"


SUITE = """
import pytest


def test_timed(benchmark):
    benchmark.pedantic(sum, args=([1, 2],), rounds=3, iterations=1)
    benchmark.extra_info["ratio"] = 1.5


def test_failing(benchmark):
    benchmark.pedantic(lambda: 1 / 0, rounds=1, iterations=1)


def test_not_timed():
    import os

    # a bench never writes into the user's cache, whatever FASTMI_HOME the shell had
    assert os.path.basename(os.environ["FASTMI_HOME"]).startswith("fastmi-bench-home-")
"""


def test_each_run_of_a_suite_appends_a_row_of_its_tests_times_and_extra_info(tmp_path):
    """bench/conftest.py, on a suite of its own: one row per run; a failed benchmark is in it, without times."""
    bench = tmp_path / "bench"
    bench.mkdir()
    for name in ("conftest.py", "history.py"):
        (bench / name).write_text((REPO / "bench" / name).read_text())
    (bench / "test_bench_tiny.py").write_text(SUITE)
    env = dict(os.environ, FASTMI_BENCH_RESULTS=str(tmp_path / "rows"), FASTMI_HOME=str(Path.home() / ".cache"))
    env.pop("FASTMI_BENCH_HOME", None)
    command = [sys.executable, "-m", "pytest", "bench/test_bench_tiny.py", "-q", "-p", "no:cacheprovider"]
    for _ in range(2):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stdout[-3000:]  # test_failing fails; the others pass
        assert "1 failed, 2 passed" in done.stdout, done.stdout[-3000:]
    first, second = (json.loads(line) for line in (tmp_path / "rows" / "tiny.jsonl").read_text().splitlines())
    assert first["bench"] == "tiny" and first["source"] == "bench/test_bench_tiny.py" and second["figures"]
    assert first["commit"] is None and first["commit_note"].startswith("unknown")  # no git checkout there
    timed, failing = first["figures"]["test_timed"], first["figures"]["test_failing"]
    assert set(first["figures"]) == {"test_timed", "test_failing"}  # a test without a benchmark has no figures
    assert timed["outcome"] == "passed" and timed["rounds"] == 3 and timed["ratio"] == 1.5
    assert 0 < timed["min_s"] <= timed["median_s"] <= timed["max_s"]
    assert failing["outcome"] == "failed" and "median_s" not in failing


def test_a_pytest_benchmark_suite_records_its_ratios(tmp_path):
    """The real wiring: bench/test_bench_masked_pool.py's row holds its times and its speed-up."""
    env = dict(os.environ, FASTMI_BENCH_RESULTS=str(tmp_path))
    args = ["bench/test_bench_masked_pool.py", "-k", "32x256x576 and fp32", "--benchmark-only", "-q"]
    command = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "--benchmark-max-time=0.05"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (row,) = (json.loads(line) for line in (tmp_path / "masked_pool.jsonl").read_text().splitlines())
    assert row["source"] == "bench/test_bench_masked_pool.py" and row["commit"]
    figures = row["figures"]
    baseline_name, fastmi_name = (
        f"test_masked_mean[{impl}-32x256x576-fp32]" for impl in ("torch_masked_mean", "fastmi")
    )
    assert set(figures) == {baseline_name, fastmi_name}
    fastmi = figures[fastmi_name]
    assert fastmi["outcome"] == "passed" and 0 < fastmi["min_s"] <= fastmi["median_s"] and fastmi["rounds"] >= 1
    speedup = figures[baseline_name]["median_s"] / fastmi["median_s"]
    assert fastmi["speedup_over_torch_masked_mean"] == pytest.approx(speedup)
