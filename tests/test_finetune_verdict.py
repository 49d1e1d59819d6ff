"""The pre-stated verdict rule of the third claim's test (fastmi/finetune/verdict.py), branch by branch."""

from __future__ import annotations

import pytest

from fastmi.finetune.verdict import CONTRADICTED, HOLDS, NOT_SHOWN, claim_verdict
from fastmi.stats.seeded_bootstrap import SeedSentenceInterval

DOWN = ("D1@tuned", "D1@last", "D2@tuned", "D2@last")


def _row(e1, **downstream):
    """E1's interval and each downstream one (default: a null [-0.02, +0.02])."""
    row = {"E1": e1}
    row.update({k: downstream.get(k.replace("@", "_"), (0.0, -0.02, 0.02)) for k in DOWN})
    return row


def test_holds_when_a_downstream_gain_and_the_objective_are_both_above_zero():
    contrasts = {
        0.1: _row((0.01, -0.01, 0.03)),
        1.0: _row((0.05, 0.02, 0.08), D2_last=(0.03, 0.012, 0.05)),
    }
    verdict = claim_verdict(contrasts)
    assert verdict.wording == HOLDS
    assert "D2@last at lambda 1" in verdict.reason and "smaller than" not in verdict.reason


def test_a_downstream_loss_at_the_same_lambda_blocks_holds():
    contrasts = {1.0: _row((0.05, 0.02, 0.08), D1_tuned=(0.03, 0.01, 0.05), D1_last=(-0.03, -0.05, -0.01))}
    verdict = claim_verdict(contrasts)
    assert verdict.wording == NOT_SHOWN
    assert "D1@last lies wholly below 0" in verdict.reason


def test_a_downstream_gain_without_the_objective_is_not_shown():
    contrasts = {0.3: _row((0.01, -0.002, 0.02), D2_tuned=(0.03, 0.01, 0.05))}
    verdict = claim_verdict(contrasts)
    assert verdict.wording == NOT_SHOWN and "E1 at lambda 0.3" in verdict.reason


def test_contradicted_when_every_downstream_interval_excludes_one_point_everywhere():
    below = (-0.01, -0.03, 0.008)
    contrasts = {
        lam: _row((0.05, 0.02, 0.08), D1_tuned=below, D1_last=below, D2_tuned=below, D2_last=(-0.02, -0.04, 0.009))
        for lam in (0.1, 0.3, 1.0, 3.0)
    }
    verdict = claim_verdict(contrasts)
    assert verdict.wording == CONTRADICTED
    assert "D2@last" in verdict.reason and "+0.009" in verdict.reason


def test_one_downstream_interval_reaching_one_point_keeps_it_not_shown():
    below = (-0.01, -0.03, 0.008)
    contrasts = {lam: _row((0.0, -0.01, 0.01), D1_tuned=below, D1_last=below, D2_tuned=below) for lam in (0.1, 1.0)}
    contrasts[1.0]["D2@last"] = (0.0, -0.01, 0.011)
    contrasts[0.1]["D2@last"] = below
    verdict = claim_verdict(contrasts)
    assert verdict.wording == NOT_SHOWN
    assert "not excluded (D2@last at lambda 1" in verdict.reason


def test_a_gain_below_the_smallest_of_interest_holds_and_says_so():
    tiny_gain = (0.005, 0.001, 0.009)
    contrasts = {
        1.0: _row((0.05, 0.02, 0.08), D1_tuned=tiny_gain, D1_last=tiny_gain, D2_tuned=tiny_gain, D2_last=tiny_gain)
    }
    verdict = claim_verdict(contrasts)
    assert verdict.wording == HOLDS and "smaller than the smallest improvement" in verdict.reason


def test_intervals_may_be_mappings_or_seed_sentence_intervals_and_bad_input_is_named():
    e1 = SeedSentenceInterval(0.05, 0.02, 0.08, 0.9975, 3, 100, ())
    contrasts = {1.0: {"E1": e1, "D1@tuned": {"point": 0.03, "low": 0.01, "high": 0.05}}}
    assert claim_verdict(contrasts).wording == HOLDS
    with pytest.raises(ValueError, match="lacks the outcomes"):
        claim_verdict({1.0: {"E1": (0, -1, 1)}}, downstream=["D1@tuned"])
    with pytest.raises(ValueError, match="lambda > 0"):
        claim_verdict({0.0: _row((0, -1, 1))})
    with pytest.raises(ValueError, match="above its high"):
        claim_verdict({1.0: _row((0, 1, -1))})
    with pytest.raises(ValueError, match="no contrasts"):
        claim_verdict({})
