"""fastmi.stats.bootstrap: one seeded bootstrap over sentences behind the bounds' confidence limits,
the paired comparisons and claims, and the fine-tuning intervals; each keeps the random stream its
published numbers were drawn with."""

from __future__ import annotations

import numpy as np
import pytest

from fastmi.stats import bootstrap
from fastmi.stats.bootstrap import (
    PAIRED_SALT,
    bootstrap_interval,
    paired_bootstrap,
    paired_counts,
    resample_counts,
    resampled_means,
    resampled_rows,
)


def stacked(blocks) -> np.ndarray:
    return np.concatenate([np.asarray(b, dtype=np.int64) for b in blocks])


def test_the_draws_stream_is_n_uniform_indices_per_resample_from_default_rng_seed():
    n, resamples, seed = 37, 150, 5
    rng = np.random.default_rng(seed)
    expected = np.stack([rng.integers(0, n, n) for _ in range(resamples)])
    assert np.array_equal(np.stack(list(resampled_rows(n, resamples, seed))), expected)
    counts = np.stack([np.bincount(rows, minlength=n) for rows in expected])
    assert np.array_equal(stacked(resample_counts(n, resamples, seed)), counts)


def test_the_paired_stream_is_multinomial_counts_from_a_salted_seed():
    n, resamples, seed = 41, 120, 3
    expected = np.random.default_rng([seed, PAIRED_SALT]).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    assert np.array_equal(stacked(paired_counts(n, resamples, seed)), expected)
    assert not np.array_equal(stacked(resample_counts(n, resamples, seed)), expected)  # two streams


def test_large_sets_are_drawn_block_by_block_to_the_same_counts(monkeypatch):
    n, resamples = 300, 500
    kept = {stream: stacked(resample_counts(n, resamples, 9, stream)) for stream in bootstrap.STREAMS}
    monkeypatch.setattr(bootstrap, "_CACHE_ENTRIES", 10)  # too large to keep
    monkeypatch.setattr(bootstrap, "_BLOCK_ENTRIES", 7 * n)  # blocks of 7 resamples
    for stream in bootstrap.STREAMS:
        blocks = list(resample_counts(n, resamples, 9, stream))
        assert np.array_equal(stacked(blocks), kept[stream])
        assert all(b.sum(axis=1).tolist() == [n] * len(b) for b in blocks)  # each resample draws n sentences
    assert len(list(resample_counts(n, resamples, 9, "draws"))) == -(-resamples // 7)


def test_resampled_means_are_the_means_of_the_drawn_rows():
    values = np.random.default_rng(0).normal(size=(25, 3))
    rows = list(resampled_rows(25, 100, 4))
    means = resampled_means(values, resample_counts(25, 100, 4))
    assert np.allclose(means, np.stack([values[r].mean(axis=0) for r in rows]))


def test_bootstrap_interval_and_paired_bootstrap_agree_on_a_mean_of_the_draws_stream():
    a = np.random.default_rng(2).normal(size=200)
    point, low, high = bootstrap_interval(lambda rows: float(a[rows].mean()), a.size, level=0.9, seed=7)
    same = paired_bootstrap(a[:, None], lambda m: m[..., 0], level=0.9, seed=7, counts=resample_counts(200, 2000, 7))
    assert (point, low, high) == pytest.approx(same, abs=1e-12)


def test_the_fine_tuning_evaluation_uses_this_bootstrap():
    from fastmi.finetune.evaluation import bootstrap_interval as evaluation_interval
    from fastmi.stats.comparison import paired_bootstrap as comparison_bootstrap

    assert evaluation_interval is bootstrap_interval and comparison_bootstrap is paired_bootstrap


def test_refusals():
    with pytest.raises(ValueError, match="stream must be one of"):
        resample_counts(10, 100, 0, stream="other")
    with pytest.raises(ValueError, match="at least 100"):
        paired_counts(10, 99, 0)
    with pytest.raises(ValueError, match="at least 2 shared"):
        paired_counts(1, 100, 0)
