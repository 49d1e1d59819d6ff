"""bench/findings_change.py: the change between two findings runs, per layer and per claim, taken here
between the two committed 10,000-sentence runs (top:512 as "old", observed as "new")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import bench_script

from fastmi.results.result import RecoverabilityResult

FINDINGS = Path(__file__).resolve().parents[1] / "docs" / "findings"


def test_every_shared_layer_and_claim_is_compared(tmp_path):
    change_script = bench_script("findings_change")
    out = tmp_path / "change.json"
    assert (
        change_script.main(
            [
                "--old",
                str(FINDINGS / "large_10k"),
                "--new",
                str(FINDINGS / "observed_10k"),
                "--out",
                str(out),
                "--markdown",
                str(tmp_path / "change.md"),
            ]
        )
        == 0
    )
    change = json.loads(out.read_text())
    old = RecoverabilityResult.from_json(FINDINGS / "large_10k" / "results.json")
    new = RecoverabilityResult.from_json(FINDINGS / "observed_10k" / "results.json")
    bound = {(r["model"], r["layer"]): r["variational_bits"] for r in old.table}
    for model, entry in change["layers"].items():
        assert entry["only_old"] == entry["only_new"] == []
        for line in entry["layers"]:
            want = next(r for r in new.table if (r["model"], r["layer"]) == (model, line["layer"]))
            assert line["variational_bits_change"] == pytest.approx(
                want["variational_bits"] - bound[model, line["layer"]]
            )
        changes = [line["variational_bits_change"] for line in entry["layers"]]
        assert entry["change_bits"] == [min(changes), max(changes)]
    old_claims = {c["name"]: c["verdict"] for c in json.loads((FINDINGS / "large_10k" / "claims.json").read_text())}
    for claim in change["claims"]:
        assert claim["verdict_old"] == old_claims.get(claim["name"])
        assert claim["changed"] == (claim["verdict_old"] != claim["verdict_new"])
    assert any(c["changed"] for c in change["claims"])  # the two alphabets' verdicts differ (docs/findings.md)
    assert "(changed)" in (tmp_path / "change.md").read_text()
