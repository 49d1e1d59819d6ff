"""fastmi.stats.claims: verdicts on synthetic sweeps built so that each claim holds, is contradicted, or
cannot be resolved; the multiplicity and the peak's selection are stated."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_results import model_result, shared_difficulty

from fastmi.results.result import RecoverabilityResult
from fastmi.stats.claims import CONTRADICTED, HOLDS, UNRESOLVED, evaluate_claims, format_claims, verdict

ENCODER_DEPTHS = 4  # encoder layers 0..4; decoder 0..8, matched at even layers


def sweep(encoder_shifts, decoder_shifts, decoder_validation=None, n=400):
    difficulty, rows = shared_difficulty(n)
    encoder = model_result("enc", "encoder", encoder_shifts, difficulty, rows, seed=1)
    decoder = model_result(
        "dec", "decoder", decoder_shifts, difficulty, rows, seed=2, validation_shifts=decoder_validation
    )
    return RecoverabilityResult.concat([encoder, decoder])


def by_name(claims):
    return {c.name.split(" (")[0]: c for c in claims}


def test_verdict_rule():
    assert verdict(0.1, 0.3) == HOLDS and verdict(-0.3, -0.1) == CONTRADICTED and verdict(-0.1, 0.2) == UNRESOLVED


def test_claims_that_hold():
    # Encoder CE 0.4 bit below the decoder's at every matched depth; decoder peaks in the middle.
    decoder = [0.0, -0.2, -0.4, -0.6, -0.8, -0.6, -0.4, -0.2, 0.0]
    encoder = [decoder[2 * i] - 0.4 for i in range(ENCODER_DEPTHS + 1)]
    claims = by_name(evaluate_claims(sweep(encoder, decoder), n_bootstrap=1000))
    each = claims["encoder keeps more than decoder at each matched depth"]
    assert each.verdict == HOLDS and len(each.tests) == ENCODER_DEPTHS + 1
    for test in each.tests:
        assert test.lower > 0 and test.difference == pytest.approx(0.4, abs=0.1)
        assert test.level == pytest.approx(1 - 0.05 / 5)  # Bonferroni over the 5 depths
    assert any("Bonferroni" in note for note in each.notes)
    mean = claims["encoder keeps more than decoder, mean over depths"]
    assert mean.verdict == HOLDS and mean.tests[0].level == 0.95
    assert mean.tests[0].difference == pytest.approx(np.mean([t.difference for t in each.tests]), abs=1e-9)
    gains = claims["decoder gains, then forgets"]
    assert gains.verdict == HOLDS
    assert [t.label.split()[3] for t in gains.tests] == ["first", "last"]
    assert "dec:4" in gains.tests[0].label  # the validation peak
    assert all(t.difference == pytest.approx(0.8, abs=0.1) for t in gains.tests)
    assert any("validation" in note for note in gains.notes) and any("intersection-union" in n for n in gains.notes)


def test_claims_that_are_contradicted():
    # Decoder bound falls monotonically (no gain); encoder keeps less than the decoder everywhere.
    decoder = [0.1 * i for i in range(9)]
    encoder = [decoder[2 * i] + 0.4 for i in range(ENCODER_DEPTHS + 1)]
    claims = by_name(evaluate_claims(sweep(encoder, decoder), n_bootstrap=1000))
    assert claims["encoder keeps more than decoder at each matched depth"].verdict == CONTRADICTED
    assert claims["encoder keeps more than decoder, mean over depths"].verdict == CONTRADICTED
    gains = claims["decoder gains, then forgets"]
    assert gains.verdict == CONTRADICTED
    assert gains.tests[0].verdict == CONTRADICTED and gains.tests[1].verdict == HOLDS  # peak (layer 1) > last


def test_claims_not_resolved():
    # No difference anywhere: the intervals straddle 0.
    decoder = [0.0] * 9
    encoder = [0.0] * (ENCODER_DEPTHS + 1)
    claims = evaluate_claims(
        sweep(encoder, decoder, decoder_validation=[0, 0, 0, -0.01, 0, 0, 0, 0, 0]), n_bootstrap=1000
    )
    assert [c.verdict for c in claims] == [UNRESOLVED] * 3
    text = format_claims(claims)
    assert text.count("NOT RESOLVED AT THIS LEVEL") == 3 and "dec:3" in text


def test_peak_is_chosen_on_validation_not_held_out():
    # Held-out says layer 2 is best; validation says layer 6: the validation choice is used.
    decoder = [0.0, -0.2, -0.8, -0.2, -0.2, -0.2, -0.2, -0.2, 0.0]
    validation = [0.0, -0.2, -0.2, -0.2, -0.2, -0.2, -0.8, -0.2, 0.0]
    claims = by_name(evaluate_claims(sweep([0.0] * 5, decoder, validation), n_bootstrap=500))
    assert "dec:6" in claims["decoder gains, then forgets"].tests[0].label


def test_claims_need_a_decoder():
    difficulty, rows = shared_difficulty(50)
    only = model_result("enc", "encoder", [0.0, 0.0, 0.0], difficulty, rows, seed=1)
    with pytest.raises(ValueError, match="decoder"):
        evaluate_claims(only)


def test_report_claims_cli(tmp_path, capsys):
    from fastmi.cli import main

    decoder = [0.0, -0.2, -0.4, -0.6, -0.8, -0.6, -0.4, -0.2, 0.0]
    sweep([d - 0.4 for d in decoder[::2]], decoder).to_json(tmp_path / "results.json")
    assert main(["report", "--out", str(tmp_path), "--claims"]) == 0
    out = capsys.readouterr().out
    assert "decoder gains, then forgets (dec): HOLDS" in out and (tmp_path / "claims.json").is_file()
