"""The two-level (seed, then sentence) bootstrap of fastmi/stats/seeded_bootstrap.py."""

from __future__ import annotations

import numpy as np
import pytest

from fastmi.stats.bootstrap import bootstrap_interval, resampled_rows
from fastmi.stats.seeded_bootstrap import bonferroni_level, seed_by_sentence, student_t_quantile, two_level_interval


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


SENTENCES_DOMINATE = {"seed_sd": 0.05, "sentence_sd": 0.4}
SEEDS_AS_LARGE = {"seed_sd": 0.4, "sentence_sd": 0.4}  # where the seed-percentile bootstrap covered 0.735


def _coverage(rng, trials, seeds, level, n_bootstrap, **spread):
    covered, points = 0, []
    for trial in range(trials):
        a, b = _crossed(rng, seeds=seeds, sentences=150, difference=0.1, **spread)
        result = two_level_interval(a, b, level=level, n_bootstrap=n_bootstrap, seed=trial)
        covered += result.low <= 0.1 <= result.high
        points.append(result.point)
    return covered / trials, float(np.mean(points))


@pytest.mark.parametrize(
    "seeds, spread",
    [(3, SENTENCES_DOMINATE), (3, SEEDS_AS_LARGE), (8, SENTENCES_DOMINATE)],
    ids=["3 seeds, sentences dominate", "3 seeds, seed spread as large", "8 seeds"],
)
def test_the_interval_covers_the_true_difference_at_its_level(seeds, spread):
    coverage, mean_point = _coverage(np.random.default_rng(11), 400, seeds, 0.95, 1000, **spread)
    # 400 datasets: a binomial sd of 1.1 points around 95%, so 0.92 is 2.7 sd below; the interval errs
    # wide by design (0.987 measured where sentences dominate at 3 seeds), and 0.995 (2 misses of 400) catches
    # one grown useless.  The seed-percentile bootstrap covered 0.74 at 3 seeds with the seeds' spread.
    assert 0.92 <= coverage <= 0.995
    assert abs(mean_point - 0.1) < 0.02


def test_at_the_bonferroni_level_three_seeds_rarely_miss():
    # Nominal 99.75% at 3 seeds (the plan's verdict), seed spread as large as the sentences': 0.998
    # measured over 2,000 datasets.  At a true 0.25%, 5 or more misses of 400 (over 1%) have probability
    # 0.4%; one t at Welch-Satterthwaite degrees of freedom missed 1.5-2.4% here, the seed-percentile
    # bootstrap far more.
    coverage, _ = _coverage(np.random.default_rng(12), 400, 3, 0.9975, 8000, **SEEDS_AS_LARGE)
    assert 1 - coverage <= 0.01


def test_the_half_width_adds_the_seed_and_the_sentence_parts_each_at_its_own_t():
    rng = np.random.default_rng(6)
    a, b = _crossed(rng, seeds=3, sentences=200, difference=0.2, seed_sd=0.2, sentence_sd=0.3)
    result = two_level_interval(a, b, level=0.9, n_bootstrap=500, seed=4)
    d = a - b
    seed_part = d.mean(axis=1).var(ddof=1) / 3
    # The shared sentence draw (row gathering here, counts there): the same "draws" stream.
    sentence_part = np.var([d[:, rows].mean() for rows in resampled_rows(200, 500, 4)], ddof=1)
    half = np.sqrt(2.919986**2 * seed_part + 1.652547**2 * sentence_part)  # t(2) and t(199) at 90%, two-sided
    assert (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-5)


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(9)
    a, b = _crossed(rng, seeds=3, sentences=150, difference=0.1, seed_sd=0.0, sentence_sd=0.4)
    spread = np.array([[0.3], [-0.2], [0.1]])  # the same runs, each seed's arm shifted: a seed effect
    without = two_level_interval(a, b, n_bootstrap=1000)
    with_spread = two_level_interval(a + spread, b, n_bootstrap=1000)
    assert with_spread.high - with_spread.low > 3 * (without.high - without.low)
    assert with_spread.per_seed[0][1:] == pytest.approx(np.add(without.per_seed[0][1:], 0.3))


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


def test_weights_with_several_seeds_use_each_seeds_ratio_and_the_shared_sentence_draw():
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 30, 120).astype(float)
    nll_a = tokens * rng.gamma(4.0, 1.0, (3, 120)) + rng.normal(0, 5, (3, 1)) * tokens
    nll_b = tokens * rng.gamma(4.0, 1.0, (3, 120))
    result = two_level_interval(nll_a / tokens, nll_b / tokens, level=0.9, n_bootstrap=300, seed=5, weights=tokens)
    ratio = (nll_a.sum(axis=1) - nll_b.sum(axis=1)) / tokens.sum()  # each seed's pooled per-token difference
    resampled = [
        ((nll_a[:, r] - nll_b[:, r]).sum(axis=1) / tokens[r].sum()).mean() for r in resampled_rows(120, 300, 5)
    ]
    half = np.sqrt(2.919986**2 * ratio.var(ddof=1) / 3 + student_t_quantile(0.9, 119) ** 2 * np.var(resampled, ddof=1))
    assert result.point == pytest.approx(ratio.mean())
    assert (result.low, result.high) == pytest.approx((ratio.mean() - half, ratio.mean() + half), rel=1e-5)
    # A plain mean would weigh every sentence alike: another point.
    assert abs(result.point - float((nll_a / tokens - nll_b / tokens).mean())) > 1e-3


def test_student_t_quantile_matches_the_tables():
    # Two-sided: t(1) at 99.75% is tan(0.99875 pi - pi / 2); the others from scipy.stats.t.ppf.
    table = [(0.95, 1, 12.706205), (0.9975, 1, 254.646600), (0.95, 2, 4.302653), (0.9975, 2, 19.962480)]
    table += [(0.9, 2, 2.919986), (0.95, 7, 2.364624), (0.9975, 149, 3.075596), (0.95, 1e9, 1.959964)]
    for level, df, expected in table:
        assert student_t_quantile(level, df) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="df >= 1"):
        student_t_quantile(0.95, 0.5)


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
