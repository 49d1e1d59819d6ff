"""bench/gpu.py --cpu-dry-run: the one-shot GPU script runs end to end, so it cannot rot unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_dry_run_writes_every_stage(tmp_path):
    out = tmp_path / "gpu.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    env["FASTMI_BENCH_RESULTS"] = str(tmp_path / "history")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu.py"),
            "--cpu-dry-run",
            "--out",
            str(out),
            "--time-budget",
            "900",
            "--no-compile",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["stages"]) == {
        "checks",
        "ceilings",
        "sweep_shapes",
        "baselines",
        "bag_topk",
        "masked_pool",
        "probe_step",
    }
    assert all(s["status"] == "ok" for s in record["stages"].values()), record["stages"]
    assert record["checks"] and all(c["ok"] for c in record["checks"])
    timed = [r for r in record["timings"] if "ms" in r]
    assert len(timed) >= 20 and all(r["ms"] > 0 for r in timed)
    # both FLOP counts where a kernel runs, and the recompute path executes more than it uses
    recompute = [r for r in timed if "recompute" in r["impl"]]
    assert recompute and all(r["executed_tflops"] > r["useful_tflops"] for r in recompute)
    assert record["ceilings"]["matmul_bf16_tflops"] > 0 and record["ceilings"]["copy_gb_per_s"] > 0
    steps = [r for r in timed if r["op"].startswith("probe step")]
    assert {r["op"].split()[2] for r in steps} == {"linear", "embedding"}
    assert all(r["planned_ms"]["optimizer"] > 0 and r["planned_ms"]["matmul"] > 0 for r in steps)
    assert not (tmp_path / "history").exists()  # a dry run measures nothing: it adds no row to the history


def test_a_finished_gpu_run_appends_its_record_to_the_history(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu

    monkeypatch.setenv("FASTMI_BENCH_RESULTS", str(tmp_path))
    record = {
        "date": "2026-12-07T00:00:00",
        "device": {"name": "NVIDIA H200"},
        "args": {"out": str(tmp_path / "gpu.json"), "time_budget": 420.0},
        "ceilings": {"matmul_bf16_tflops": 700.0},
        "timings": [{"op": "bag_cross_entropy", "impl": "fastmi", "ms": 1.5}],
        "targets": {"speedup_vs_liger (>= 5)": 6.0},
    }
    gpu.record_history(record)
    (row,) = (json.loads(line) for line in (tmp_path / "gpu.jsonl").read_text().splitlines())
    assert row["source"] == "bench/gpu.py" and row["commit"] and row["figures"]["ceilings"] == record["ceilings"]
    assert row["figures"]["args"] == {"time_budget": 420.0} and "date" not in row["figures"]  # no local path


def test_gpu_bench_records_a_failed_stage_and_goes_on(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu
    import gpu_stages

    def broken(run):
        raise RuntimeError("simulated sticky CUDA error")

    monkeypatch.setattr(gpu_stages, "STAGES", {"ceilings": broken, "masked_pool": gpu_stages.masked_pool})
    out = tmp_path / "partial.json"
    code = gpu.main(["--cpu-dry-run", "--out", str(out)])
    record = json.loads(out.read_text())
    assert code == 0
    assert record["stages"]["ceilings"]["status"] == "failed" and "simulated" in record["stages"]["ceilings"]["error"]
    assert record["stages"]["masked_pool"]["status"] == "ok"
    assert any(r["op"] == "masked_pool mean" and "ms" in r for r in record["timings"])
