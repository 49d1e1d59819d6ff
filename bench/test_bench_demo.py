"""CPU benchmark: ``fastmi demo`` end to end, cold and warm, as a user runs it.

    python -m pytest bench/test_bench_demo.py --benchmark-only -s

Each case runs ``python -m fastmi.cli demo`` in a subprocess (interpreter start and imports count):
``cold``: fresh output directory and fresh FASTMI_HOME (the GGUF decoder is dequantised again, both
models extracted and probed); ``caches``: the caches exist but the per-model results were deleted
(probing redone); ``warm``: everything exists (the documented rerun).  Targets on 2 CPU cores:
cold <= 300 s, warm <= 60 s.  Baseline in the same run: a subprocess that only imports fastmi and
torch, so the ratios say how much the demo costs over starting Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest


def run(args, env) -> float:
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-bench")
    env = dict(os.environ, FASTMI_HOME=str(root / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return root, env


@pytest.fixture(scope="module")
def import_baseline(paths):
    _, env = paths
    return min(run([sys.executable, "-c", "import torch, fastmi"], env) for _ in range(2))


@pytest.mark.parametrize("case", ["cold", "caches", "warm"])
def test_demo(benchmark, paths, import_baseline, case):
    root, env = paths
    out = root / "demo"
    command = [sys.executable, "-m", "fastmi.cli", "demo", "--out", str(out), "--no-progress"]

    def prepare():
        if case == "cold":
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(root / "home", ignore_errors=True)
        elif case == "caches":
            shutil.rmtree(out / "models", ignore_errors=True)
        elif not (out / "results.json").exists():
            run(command, env)  # the warm case needs a finished demo
        return (), {}

    benchmark.pedantic(lambda: run(command, env), setup=prepare, rounds=1, iterations=1)
    seconds = benchmark.stats.stats.min
    benchmark.extra_info.update(
        {"seconds": seconds, "import_s": import_baseline, "over_import": seconds / import_baseline}
    )
    print(f"\ndemo {case}: {seconds:.1f} s ({seconds / import_baseline:.1f} x importing torch + fastmi)")
    assert (out / "results.csv").is_file() and (out / "results.png").is_file()
