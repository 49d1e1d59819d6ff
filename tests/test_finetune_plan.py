"""The plan driver of the third claim (fastmi/finetune/plan.py, bench/finetune_claim.py --plan): every
arm x seed a resumable `fastmi finetune` run; done runs are skipped, interrupted ones resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import bench_script

from fastmi.cli import build_parser, main
from fastmi.finetune.plan import load_plan, make_plan, plan_runs, run_plan, run_status
from tests.tiny import make_tiny_model, random_sentences

OPTIONS = {"batch-size": 4, "logging-steps": 1, "save-steps": 1, "layers": "1", "no-progress": True}


def test_plan_lists_every_arm_and_seed_as_a_finetune_command(tmp_path):
    plan = make_plan(str(tmp_path), ["m1", "m2"], [0, 0.3], [0, 1, 2], steps=7, finetune={"full": True, "lr": 5e-5})
    runs = plan_runs(plan)
    assert len(runs) == 2 * 2 * 3 and len({run["out"] for run in runs}) == 12
    parsed = build_parser().parse_args(["finetune", *runs[1]["args"]])
    assert (parsed.model, parsed.lam, parsed.seed, parsed.steps) == ("m1", 0.3, 0, 7)
    assert (parsed.tune_fraction, parsed.probe_fraction, parsed.split_seed) == (0.4, 0.3, 0)
    assert parsed.lora is False and parsed.lr == 5e-5 and parsed.out == runs[1]["out"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert load_plan(tmp_path / "plan.json") == plan
    with pytest.raises(ValueError):
        make_plan(str(tmp_path), ["m"], [0], [0], finetune={"lambda": 1})
    with pytest.raises(ValueError):
        make_plan(str(tmp_path), ["m"], [-1], [0])


def test_plan_driver_runs_one_then_after_an_interrupt_only_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    model = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(40, seed=1)))
    plan = make_plan(
        str(tmp_path / "runs"), [str(model)], [0.0, 1.0, 3.0], [0], steps=2, finetune={**OPTIONS, "corpus": str(corpus)}
    )
    runs = plan_runs(plan)
    calls = []

    def runner(args):
        calls.append(args[args.index("--out") + 1])
        return main(["finetune", *args])

    assert [r["code"] for r in run_plan(plan, max_runs=1, runner=runner, say=lambda _: None)] == [0]
    assert [run_status(r["out"]) for r in runs] == ["done", "todo", "todo"]
    # The second run is 'interrupted': started, checkpoints written, killed before its finished marker.
    assert main(["finetune", *runs[1]["args"]]) == 0
    (Path(runs[1]["out"]) / "finetune.json").unlink()
    assert [run_status(r["out"]) for r in runs] == ["done", "interrupted", "todo"]

    bench = bench_script("finetune_claim")
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert bench.main(["--plan", str(tmp_path / "plan.json")]) == 0
    listed = capsys.readouterr().out
    assert "1 of 3 runs done, 2 left" in listed and f"interrupted  {runs[1]['out']}" in listed

    calls.clear()
    started = run_plan(plan, runner=runner, say=lambda _: None)
    assert calls == [runs[1]["out"], runs[2]["out"]]  # the finished one is not run again
    assert [r["code"] for r in started] == [0, 0]
    assert [run_status(r["out"]) for r in runs] == ["done"] * 3
    done = json.loads((Path(runs[2]["out"]) / "finetune.json").read_text())
    assert done["config"]["lam"] == 3.0 and done["claim_split"]["sizes"]["tune"] == 16
    calls.clear()
    assert run_plan(plan, runner=runner, say=lambda _: None) == [] and calls == []


def test_plan_driver_stops_at_a_failed_run(tmp_path):
    plan = make_plan(str(tmp_path), ["m"], [0, 1], [0])
    started = run_plan(plan, runner=lambda args: 3, say=lambda _: None)
    assert [r["code"] for r in started] == [3]


def test_the_default_runner_runs_fastmi_finetune_in_a_subprocess_and_returns_its_code(tmp_path):
    plan = make_plan(str(tmp_path / "runs"), ["minilm"], [0, 1], [0], finetune={"lr": -1})  # refused: exit code 2
    started = run_plan(plan, say=lambda _: None)
    assert [r["code"] for r in started] == [2]  # fastmi's exit code for bad input; the plan stops there
    assert run_status(started[0]["out"]) == "todo"


def test_workers_share_a_plan_by_taking_disjoint_runs(tmp_path):
    plan = make_plan(str(tmp_path), ["m"], [0, 0.1, 0.3, 1, 3], [0, 1, 2])
    taken = []
    for k in range(2):
        started = run_plan(plan, runner=lambda args: 0, say=lambda _: None, worker=(k, 2))
        taken.append([run["out"] for run in started])
    assert not set(taken[0]) & set(taken[1])
    assert sorted(taken[0] + taken[1]) == sorted(run["out"] for run in plan_runs(plan))
    assert len(taken[0]) == 8 and len(taken[1]) == 7
    with pytest.raises(ValueError, match="worker 2/2"):
        run_plan(plan, runner=lambda args: 0, say=lambda _: None, worker=(2, 2))
