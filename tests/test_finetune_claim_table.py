"""The claim's table and verdict from per-run evaluation JSONs (fastmi/finetune/claim_table.py and
bench/finetune_claim.py --aggregate), on synthetic evaluations: no model runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bench_scripts import bench_script

from fastmi.finetune.claim_table import claim_table
from fastmi.finetune.plan import make_plan, plan_runs
from fastmi.stats.seeded_bootstrap import two_level_interval

N, D2_N, LAYERS = 240, 200, range(7)


def _evaluation(lam: float, seed: int, rng, gain: float) -> dict:
    """One run's per-item values: ``gain`` raises E1 (bits) and D1 at the tuned layer's accuracy.

    Each item's difficulty is shared by every run (the crossed design), and runs differ a little
    (seed shift, per-item noise): 3 seeds at the family's level put a t quantile with 2 degrees of
    freedom (14.1 at 99.5%) on the seed spread, so a run-to-run spread near the gain hides it."""
    rows = np.arange(0, 2 * N, 2)  # held-out rows of the corpus
    sentence = np.random.default_rng(99).normal(0, 0.5, N)  # each sentence's own difficulty, in every run
    e1 = 1.0 + sentence + rng.normal(0, 0.01) + rng.normal(0, 0.1, N) + gain
    accuracy = np.clip(0.7 + gain / 2, 0, 1)
    hardness = np.random.default_rng(97).random(N)  # an item is right where its hardness is below the accuracy
    tokens = np.random.default_rng(98).integers(3, 40, N).astype(float)

    def entry(values, weights=None, at=rows):
        out = {"rows": at.tolist(), "values": np.asarray(values, dtype=float).tolist()}
        if weights is not None:
            out["weights"] = weights.tolist()
        return out

    right = lambda p, n: (rng.random(n) < p).astype(float)  # noqa: E731
    solved = lambda p: (hardness + rng.normal(0, 0.02, N) < p).astype(float)  # noqa: E731
    return {
        "run": f"lambda-{lam:g}-seed-{seed}",
        "lambda": lam,
        "seed": seed,
        "model": "tiny",
        "steps": 20,
        "train_sentences": 400,
        "tuned_layer": 3,
        "last_layer": 6,
        "outcomes": {
            "E1": {"3": entry(e1), "6": entry(e1 - 0.5 - gain)},
            "E2": {str(layer): entry(e1 - 0.1 * layer) for layer in LAYERS},
            "D1": {"3": entry(solved(accuracy)), "6": entry(solved(0.7))},
            "D2": {
                "3": entry(right(0.6, D2_N), at=np.arange(D2_N)),
                "6": entry(right(0.6, D2_N), at=np.arange(D2_N)),
            },
            "O": {"all": entry(4.0 + sentence + 0.1 * gain + rng.normal(0, 0.1, N), tokens)},
        },
    }


def _runs(tmp_path, gains):
    plan = make_plan(str(tmp_path / "runs"), ["tiny"], sorted(gains), [0, 1, 2], steps=20)
    rng = np.random.default_rng(4)
    evaluations = {}
    for run in plan_runs(plan):
        evaluations[(run["lambda"], run["seed"])] = _evaluation(run["lambda"], run["seed"], rng, gains[run["lambda"]])
    return plan, evaluations


def test_the_table_contrasts_each_lambda_with_the_control_paired_on_seed_and_sentence(tmp_path):
    _, evaluations = _runs(tmp_path, {0.0: 0.0, 1.0: 0.0, 3.0: 0.3})
    table = claim_table(list(evaluations.values()), n_bootstrap=4000)
    assert table["family"] == ["E1@tuned", "D1@tuned", "D1@last", "D2@tuned", "D2@last"]
    assert table["family_size"] == 10 and table["family_level"] == pytest.approx(0.995)
    rows = {(r["lambda"], r["outcome"], r["layer"]): r for r in table["rows"]}
    assert len(rows) == len(table["rows"]) == 2 * (5 + 2 + len(LAYERS))
    # E1 at the tuned layer: the two-level interval of the per-seed arrays, at the family's level.
    e1 = rows[(3.0, "E1", "3")]
    treated = np.array([evaluations[(3.0, s)]["outcomes"]["E1"]["3"]["values"] for s in range(3)])
    control = np.array([evaluations[(0.0, s)]["outcomes"]["E1"]["3"]["values"] for s in range(3)])
    expected = two_level_interval(treated, control, level=0.995, n_bootstrap=4000)
    assert (e1["point"], e1["low"], e1["high"]) == pytest.approx((expected.point, expected.low, expected.high))
    assert e1["point"] == pytest.approx(0.3, abs=0.05) and e1["low"] > 0 and e1["in_family"]
    assert len(e1["per_seed"]) == 3 and e1["level"] == pytest.approx(0.995)
    # Outside the family: E1 at the last layer and O at 95%, E2 at 1 - 0.05 / 7.
    assert not rows[(3.0, "E1", "6")]["in_family"] and rows[(3.0, "E1", "6")]["level"] == pytest.approx(0.95)
    assert rows[(3.0, "E2", "4")]["level"] == pytest.approx(1 - 0.05 / 7)
    own = rows[(3.0, "O", "all")]
    assert own["point"] == pytest.approx(0.03, abs=0.03) and own["unit"] == "nats/token"
    assert rows[(1.0, "E1", "3")]["low"] < 0 < rows[(1.0, "E1", "3")]["high"]  # no gain at lambda 1
    assert table["verdict"]["wording"] == "holds at this scale"
    assert "lambda 3" in table["verdict"]["reason"] and "3 seeds" in table["verdict"]["scale"]


def test_e2_on_some_seeds_is_contrasted_over_those_seeds_only_and_says_so(tmp_path):
    _, evaluations = _runs(tmp_path, {0.0: 0.0, 3.0: 0.3})
    for (_, seed), evaluation in evaluations.items():
        if seed != 0:
            del evaluation["outcomes"]["E2"]
    table = claim_table(list(evaluations.values()), n_bootstrap=4000)
    rows = {(r["outcome"], r["layer"]): r for r in table["rows"]}
    e2 = rows[("E2", "3")]
    assert e2["training_seeds"] == [0] and e2["seeds"] == 1 and rows[("E1", "3")]["training_seeds"] == [0, 1, 2]
    treated = np.array([evaluations[(3.0, 0)]["outcomes"]["E2"]["3"]["values"]])
    control = np.array([evaluations[(0.0, 0)]["outcomes"]["E2"]["3"]["values"]])
    expected = two_level_interval(treated, control, level=1 - 0.05 / 7, n_bootstrap=4000)
    assert (e2["point"], e2["low"], e2["high"]) == pytest.approx((expected.point, expected.low, expected.high))
    # E2 on seed 0 of the control only: no seed has it in every arm, so there is no E2 row.
    del evaluations[(3.0, 0)]["outcomes"]["E2"]
    assert not any(r["outcome"] == "E2" for r in claim_table(list(evaluations.values()), n_bootstrap=4000)["rows"])


def test_bench_aggregate_reads_the_runs_evaluations_and_writes_the_table(tmp_path, capsys):
    plan, evaluations = _runs(tmp_path, {0.0: 0.0, 0.3: 0.0})
    bench = bench_script("finetune_claim")
    work, report = tmp_path / "eval", tmp_path / "report"
    for run in plan_runs(plan):
        path = bench.evaluation_path(plan, run, work)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(evaluations[(run["lambda"], run["seed"])]))
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    args = ["--plan", str(tmp_path / "plan.json"), "--aggregate", "--work", str(work), "--report", str(report)]
    assert bench.main([*args, "--resamples", "4000"]) == 0
    table = json.loads((report / "claim_table_tiny.json").read_text())
    assert table["family_size"] == 5 and table["verdict"]["wording"] == "not shown at this scale"
    markdown = (report / "claim_table_tiny.md").read_text()
    assert "| 0.3 | E1 (bits) | 3 |" in markdown and "**Verdict: not shown at this scale**" in markdown
    assert "not shown at this scale" in capsys.readouterr().out
    # A run without its evaluation: refused, naming it.
    bench.evaluation_path(plan, plan_runs(plan)[-1], work).unlink()
    with pytest.raises(SystemExit, match="not evaluated yet"):
        bench.main([*args, "--resamples", "4000"])


def test_unpaired_or_incomplete_evaluations_are_refused(tmp_path):
    _, evaluations = _runs(tmp_path, {0.0: 0.0, 1.0: 0.1})
    runs = list(evaluations.values())
    with pytest.raises(ValueError, match="no control"):
        claim_table([r for r in runs if r["lambda"] > 0], n_bootstrap=2000)
    with pytest.raises(ValueError, match="seeds"):
        claim_table([r for r in runs if not (r["lambda"] == 1.0 and r["seed"] == 2)], n_bootstrap=2000)
    moved = json.loads(json.dumps(evaluations[(1.0, 0)]))
    moved["outcomes"]["D1"]["3"]["rows"] = [r + 1 for r in moved["outcomes"]["D1"]["3"]["rows"]]
    with pytest.raises(ValueError, match="other items"):
        claim_table([moved if r is evaluations[(1.0, 0)] else r for r in runs], n_bootstrap=2000)
    no_downstream = json.loads(json.dumps(runs))
    for run in no_downstream:
        del run["outcomes"]["D1"], run["outcomes"]["D2"]
    with pytest.raises(ValueError, match="downstream"):
        claim_table(no_downstream, n_bootstrap=2000)
