"""The planner's time estimates against measured runs of the demo models on this CPU (issue 7).

It records estimate / measured for extraction and for one probe epoch, in this process's CPU time
on one thread; tests/test_plan_honesty.py explains the method and holds the same runs within a
factor of 2.  Run: ``python -m pytest bench/test_bench_plan_honesty.py -s``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_plan_honesty import measure_and_plan, one_thread_cpu_time  # noqa: E402, F401 (an autouse fixture)

from fastmi.data.corpus import Corpus  # noqa: E402

DEMO_RUNS = [("minilm", 200, "observed", 128), ("smollm2", 120, "top:512", 48)]


@pytest.mark.parametrize(("spec", "sentences", "vocab", "max_length"), DEMO_RUNS)
def test_plan_estimate_over_measured(spec, sentences, vocab, max_length, tmp_path, monkeypatch, benchmark):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))  # smollm2 is dequantised afresh: a minute
    corpus = Corpus.demo(sentences)
    extraction, epoch = benchmark.pedantic(
        lambda: measure_and_plan(spec, corpus, vocab, tmp_path, monkeypatch, max_length=max_length),
        rounds=1,
        iterations=1,
    )
    ratios = {"extraction_estimate_over_measured": extraction[0] / extraction[1],
              "probe_epoch_estimate_over_measured": epoch[0] / epoch[1]}  # fmt: skip
    benchmark.extra_info.update(ratios)
    print(f"\n{spec}: " + ", ".join(f"{name} {value:.2f}" for name, value in ratios.items()))
