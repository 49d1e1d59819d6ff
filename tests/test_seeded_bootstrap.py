"""The two-level (seed, then sentence) bootstrap of fastmi/stats/seeded_bootstrap.py."""

from __future__ import annotations

import numpy as np
import pytest

from fastmi.stats.bootstrap import bootstrap_interval
from fastmi.stats.seeded_bootstrap import bonferroni_level, seed_by_sentence, two_level_interval


def _crossed(rng, seeds, sentences, difference, seed_sd, sentence_sd, noise_sd=0.3):
    """Arms a, b [S, N] whose population mean difference is ``difference``: a seed effect shared by
    the seed's sentences, a sentence effect shared by every seed, and noise per cell."""
    b = rng.normal(2.0, 1.0, (seeds, sentences))
    shift = (
        difference
        + rng.normal(0, seed_sd, (seeds, 1))
        + rng.normal(0, sentence_sd, (1, sentences))
        + rng.normal(0, noise_sd, (seeds, sentences))
    )
    return b + shift, b


def test_the_interval_covers_the_true_difference_at_its_level():
    rng = np.random.default_rng(11)
    trials, covered, centred = 200, 0, []
    for _ in range(trials):
        a, b = _crossed(rng, seeds=8, sentences=150, difference=0.1, seed_sd=0.05, sentence_sd=0.4)
        result = two_level_interval(a, b, level=0.95, n_bootstrap=1000, seed=3)
        covered += result.low <= 0.1 <= result.high
        centred.append(result.point)
    # 200 datasets: a binomial sd of 1.5 points around 95%; the band allows about 4 of them.
    assert 0.89 <= covered / trials <= 0.995
    assert abs(np.mean(centred) - 0.1) < 0.01


def test_seed_spread_widens_the_interval_beyond_the_sentence_bootstrap():
    rng = np.random.default_rng(5)
    a, b = _crossed(rng, seeds=3, sentences=400, difference=0.0, seed_sd=0.3, sentence_sd=0.2)
    two = two_level_interval(a, b, n_bootstrap=2000)
    d = (a - b).mean(axis=0)  # seed-averaged per sentence: sentences resampled, runs held fixed
    _, low, high = bootstrap_interval(lambda rows: float(d[rows].mean()), d.size, resamples=2000)
    assert two.high - two.low > 2 * (high - low)
    # Without seed effects the two agree roughly (the crossed resample is only a little wider).
    a, b = _crossed(rng, seeds=3, sentences=400, difference=0.0, seed_sd=0.0, sentence_sd=0.5, noise_sd=0.05)
    two = two_level_interval(a, b, n_bootstrap=2000)
    d = (a - b).mean(axis=0)
    _, low, high = bootstrap_interval(lambda rows: float(d[rows].mean()), d.size, resamples=2000)
    assert 0.8 < (two.high - two.low) / (high - low) < 1.4


def test_one_seed_is_the_paired_sentence_bootstrap():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, 300), rng.normal(0.8, 1.0, 300)
    result = two_level_interval([a], [b], level=0.9, n_bootstrap=500, seed=7)
    d = a - b
    expected = bootstrap_interval(lambda rows: float(d[rows].mean()), d.size, level=0.9, resamples=500, seed=7)
    assert (result.point, result.low, result.high) == pytest.approx(expected, abs=1e-12)
    assert result.per_seed[0] == pytest.approx(expected, abs=1e-12)
    assert (result.seeds, result.sentences) == (1, 300)


def test_each_seed_has_its_own_paired_interval():
    rng = np.random.default_rng(4)
    a, b = _crossed(rng, seeds=3, sentences=200, difference=0.2, seed_sd=0.2, sentence_sd=0.3)
    result = two_level_interval(a, b, n_bootstrap=1000, seed=1)
    for s in range(3):
        d = a[s] - b[s]
        expected = bootstrap_interval(lambda rows, d=d: float(d[rows].mean()), d.size, resamples=1000, seed=1)
        assert result.per_seed[s] == pytest.approx(expected, abs=1e-12)
    assert result.point == pytest.approx(float((a - b).mean()))


def test_weights_make_each_seed_a_pooled_ratio():
    rng = np.random.default_rng(8)
    tokens = rng.integers(1, 30, 250).astype(float)
    nll_a, nll_b = tokens * rng.gamma(4.0, 1.0, 250), tokens * rng.gamma(4.0, 1.0, 250)
    result = two_level_interval([nll_a / tokens], [nll_b / tokens], n_bootstrap=400, seed=2, weights=tokens)
    expected = bootstrap_interval(
        lambda rows: float(nll_a[rows].sum() / tokens[rows].sum() - nll_b[rows].sum() / tokens[rows].sum()),
        tokens.size,
        resamples=400,
        seed=2,
    )
    assert (result.point, result.low, result.high) == pytest.approx(expected, abs=1e-12)


def test_bonferroni_level_and_the_checks():
    assert bonferroni_level(0.05, 20) == pytest.approx(0.9975)
    assert bonferroni_level(0.05, 1) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="tests"):
        bonferroni_level(0.05, 0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 50))
    with pytest.raises(ValueError, match="paired"):
        two_level_interval(a, a[:2])
    with pytest.raises(ValueError, match="same held-out sentences"):
        seed_by_sentence([a[0], a[1, :40]])
    with pytest.raises(ValueError, match="n_bootstrap >= 8000"):
        two_level_interval(a, a + 1, level=bonferroni_level(0.05, 20), n_bootstrap=2000)
    wide = two_level_interval(a, a + rng.normal(size=a.shape), level=0.9975, n_bootstrap=8000)
    narrow = two_level_interval(a, a + rng.normal(size=a.shape), level=0.95, n_bootstrap=8000)
    assert wide.high - wide.low > narrow.high - narrow.low
