"""fastmi.compare: paired bootstrap intervals cover a known difference at the stated rate; layer
names, matched depths and tokenizers; the per-sentence scores a comparison needs survive JSON."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_results import H_T, model_result, shared_difficulty

import fastmi
from fastmi.results.result import RecoverabilityResult
from fastmi.stats.comparison import matched_layers, paired_bootstrap, resolve_layer


def test_paired_interval_covers_a_known_difference_at_the_stated_rate():
    # Each sentence has a shared difficulty (sd 1) and own noise (sd 0.3 each side): the paired
    # difference has sd ~0.42, the unpaired one ~1.5.  400 simulated samples of 150 sentences.
    rng = np.random.default_rng(0)
    true_difference, trials, n, level = 0.1, 400, 150, 0.9
    covered, widths = 0, []
    for trial in range(trials):
        difficulty = rng.standard_normal(n)
        a = difficulty + 0.3 * rng.standard_normal(n) + true_difference
        b = difficulty + 0.3 * rng.standard_normal(n)
        point, lower, upper = paired_bootstrap(
            np.column_stack([a, b]), lambda m: m[..., 0] - m[..., 1], level=level, n_bootstrap=400, seed=trial
        )
        assert lower <= point <= upper and point == pytest.approx(a.mean() - b.mean())
        covered += lower <= true_difference <= upper
        widths.append(upper - lower)
    rate = covered / trials
    # Binomial sd of the rate is 0.015: 3 sd either side of 0.9 (the percentile bootstrap runs a little low).
    assert 0.855 <= rate <= 0.945, rate
    # Pairing pays: the interval is about as wide as the paired sd says, far narrower than unpaired.
    expected = 2 * 1.645 * np.sqrt(2 * 0.3**2 / n)
    assert np.median(widths) == pytest.approx(expected, rel=0.15)


def two_models(shift_a=-0.3, vocab_b=1000, entropy_b=H_T):
    difficulty, rows = shared_difficulty(300)
    a = model_result("enc", "encoder", [shift_a] * 4, difficulty, rows, seed=1)
    b = model_result(
        "dec",
        "decoder",
        [0.0, -0.1, -0.3, -0.1, 0.0, 0.0, 0.0],
        difficulty,
        rows,
        seed=2,
        vocab_size=vocab_b,
        entropy=entropy_b,
    )
    return RecoverabilityResult.concat([a, b])


def test_compare_layers_of_one_model_in_bits():
    result = two_models()
    cmp = fastmi.compare(result, "dec:peak", "dec:last", n_bootstrap=500)
    assert cmp.unit == "bits" and {r["bound"] for r in cmp.rows} == {"variational", "list_fano", "fano"}
    row = next(r for r in cmp.rows if r["bound"] == "variational")
    assert (row["a_layer"], row["b_layer"]) == (2, 6)
    stats = result.held_out["dec"]
    assert row["difference"] == pytest.approx(stats.layers[6]["ce_bits"].mean() - stats.layers[2]["ce_bits"].mean())
    assert row["lower"] > 0.1 and row["lower"] <= row["difference"] <= row["upper"]
    assert any("validation" in note for note in cmp.notes)
    assert "paired bootstrap 95% interval" in cmp.format()


def test_compare_models_at_matched_depth():
    result = two_models()
    assert matched_layers(result, "enc", "dec") == [(0, 0), (1, 2), (2, 4), (3, 6)]
    cmp = fastmi.compare(result, "enc", "dec", n_bootstrap=300, bounds_to_compare=("variational",))
    assert cmp.unit == "bits" and len(cmp.rows) == 4 and all(r["lower"] > 0 for r in cmp.rows[::3])
    # Different tokenizers: compared as fractions of each model's own H(T), and said so.
    other = two_models(vocab_b=50_000, entropy_b=8.0)
    cmp = fastmi.compare(other, "enc:1", "dec:2", n_bootstrap=300, bounds_to_compare=("variational",))
    row = cmp.rows[0]
    assert cmp.unit == "fraction of H(T)" and any("different tokenizers" in note for note in cmp.notes)
    assert row["b_value"] == pytest.approx((8.0 - other.held_out["dec"].layers[2]["ce_bits"].mean()) / 8.0, abs=1e-6)


def test_layer_names_and_bad_input():
    result = two_models()
    assert resolve_layer(result, "dec:first")[1:] == (0, "first")
    assert resolve_layer(result, ("dec", 3))[1] == 3 and resolve_layer(result, "dec")[1] is None
    with pytest.raises(ValueError, match="no model"):
        fastmi.compare(result, "nope", "dec")
    with pytest.raises(ValueError, match="has no layer 9"):
        fastmi.compare(result, "dec:9", "dec:0")
    with pytest.raises(ValueError, match="both all of dec"):
        fastmi.compare(result, "dec", "dec")
    with pytest.raises(ValueError, match="for both A and B"):
        fastmi.compare(result, "dec:1", "enc")
    bare = RecoverabilityResult(result.table, result.config)
    with pytest.raises(ValueError, match="held-out scores"):
        fastmi.compare(bare, "dec:1", "dec:2")


def test_held_out_scores_survive_json_and_model_selection(tmp_path):
    result = two_models()
    back = RecoverabilityResult.from_json(result.to_json(tmp_path / "r.json"))
    for model in ("enc", "dec"):
        np.testing.assert_array_equal(back.held_out[model].rows, result.held_out[model].rows)
        np.testing.assert_allclose(
            back.held_out[model].layers[1]["ce_bits"], result.held_out[model].layers[1]["ce_bits"], rtol=1e-6
        )  # stored as float32
    assert set(back.for_model("dec").held_out) == {"dec"}


def test_compare_cli(tmp_path, capsys):
    from fastmi.cli import main

    two_models().to_json(tmp_path / "results.json")
    assert (
        main(
            [
                "compare",
                "--out",
                str(tmp_path),
                "dec:peak",
                "dec:last",
                "--bound",
                "variational",
                "--bootstrap",
                "300",
                "--json",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dec:2 (peak)" in out and "dec:6 (last)" in out and (tmp_path / "c.json").is_file()
    assert main(["compare", "--out", str(tmp_path), "dec:x", "dec:last"]) == 2
