"""Intervals for a seed x sentence design: two arms paired on training seed and held-out sentence.

In the third claim's test (docs/finetune.md) every arm is fine-tuned once per seed and every run is
scored on the same N held-out sentences.  An arm's figure is then the mean over its S runs, and a
bootstrap over sentences alone treats those S runs as fixed: its interval leaves out the
run-to-run spread of training (initialisation, data order, masking), which a verdict must carry.

:func:`two_level_interval` resamples both levels.  Each resample draws S seeds with replacement,
then N sentences with replacement, and takes the mean over the drawn seeds of the two arms' mean
difference on the drawn sentences.  The sentence draw is one for the whole resample, shared by every
seed and by both arms: the sentences are the same in every run (a crossed design), so their sampling
error is common to all runs and must not average out over seeds.  (Resampling both margins of a
crossed design counts the seed x sentence interaction twice, so the interval errs on the wide side;
with few seeds the seed level errs the other way, see :func:`two_level_interval`.)

The sentence draws are the library's "draws" stream (:mod:`fastmi.stats.bootstrap`), so with one seed
the interval is exactly :func:`fastmi.stats.bootstrap.bootstrap_interval` of the mean difference, and
each seed's own paired interval (``per_seed``) comes from the same resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastmi.stats.bootstrap import check_resamples, percentile_interval, resample_counts

__all__ = ["SeedSentenceInterval", "two_level_interval", "bonferroni_level", "seed_by_sentence"]

SEED_SALT = 0x73656564  # "seed": the seed draws' stream, apart from the sentences' under the same seed
MIN_TAIL_DRAWS = 10  # resamples beyond each limit, at least: fewer make the percentile a coin toss


@dataclass(frozen=True)
class SeedSentenceInterval:
    """Mean over seeds of the arms' (weighted) mean difference, its two-level percentile interval at
    ``level``, and each seed's own sentence-paired ``(point, low, high)`` at the same level."""

    point: float
    low: float
    high: float
    level: float
    seeds: int
    sentences: int
    per_seed: tuple[tuple[float, float, float], ...]

    def to_dict(self) -> dict:
        return {
            "point": self.point,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "seeds": self.seeds,
            "sentences": self.sentences,
            "per_seed": [list(entry) for entry in self.per_seed],
        }


def bonferroni_level(alpha: float = 0.05, tests: int = 1) -> float:
    """The confidence level of each of ``tests`` intervals whose family errs with probability at most
    ``alpha`` (Bonferroni): ``1 - alpha / tests``; 20 contrasts at alpha 0.05 give 0.9975."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if not isinstance(tests, int) or isinstance(tests, bool) or tests < 1:
        raise ValueError(f"tests must be a positive int, got {tests!r}")
    return 1.0 - alpha / tests


def seed_by_sentence(values, name: str = "values") -> np.ndarray:
    """``values`` as a float64 [S, N] array: an [S, N] array, or one [N] array per seed (the same N
    held-out sentences, in the same order, in every seed)."""
    if isinstance(values, np.ndarray):
        array = values.astype(np.float64)
    else:
        rows = [np.asarray(row, dtype=np.float64).ravel() for row in values]
        lengths = sorted({row.size for row in rows})
        if len(lengths) > 1:
            raise ValueError(
                f"{name}: the seeds hold {lengths} sentences; every seed must be scored on the same held-out sentences"
            )
        array = np.stack(rows) if rows else np.empty((0, 0))
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 2:
        raise ValueError(f"{name} must be [seeds >= 1, sentences >= 2], got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds values that are not finite")
    return array


def two_level_interval(
    a,
    b,
    level: float = 0.95,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    weights: Sequence[float] | np.ndarray | None = None,
) -> SeedSentenceInterval:
    """Arm ``a`` minus arm ``b``, paired on seed (row) and held-out sentence (column).

    ``a``, ``b``: [S, N] (or one [N] array per seed), row s of both from the runs of seed s.
    ``weights`` [N] (default: all 1): each sentence's weight in its seed's mean, the same in both
    arms; a per-token loss is the sentence's mean loss weighted by its token count, and then the
    mean is sum(nll) / sum(tokens) in every resample, as a pooled per-token loss should be.

    Point: the mean over seeds of each seed's weighted mean difference.  Interval: percentiles of the
    same statistic over ``n_bootstrap`` two-level resamples (module docstring).  The seeds' own
    intervals resample the sentences alone.  With few seeds the seed level can only redraw what it
    saw (three seeds give ten distinct draws, and a spread shrunk by (S - 1) / S), so where runs
    differ far more than sentences the interval is narrower than its level says.
    """
    a, b = seed_by_sentence(a, "a"), seed_by_sentence(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"the arms must be paired on seed and sentence: shapes {a.shape} and {b.shape}")
    if not 0.5 <= level < 1.0:
        raise ValueError(f"level must be in [0.5, 1), got {level!r}")
    n_bootstrap = check_resamples(n_bootstrap)
    tail = (1.0 - level) / 2.0 * n_bootstrap
    if tail < MIN_TAIL_DRAWS - 1e-9:  # the tolerance: 0.9975's tail share is not exact in binary
        needed = int(np.ceil(MIN_TAIL_DRAWS / ((1.0 - level) / 2.0) - 1e-6))
        raise ValueError(
            f"{n_bootstrap} resamples leave {tail:.1f} beyond each limit at level {level}; use n_bootstrap >= {needed}"
        )
    num_seeds, n = a.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.size != n or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n} finite values >= 0, not all 0")
    weighted = (a - b) * w  # [S, N]: the difference's numerator per sentence

    # Per resample of sentences, each seed's weighted mean difference: [B, S], block by block.
    seed_means = []
    for counts in resample_counts(n, n_bootstrap, seed, "draws"):
        c = counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            seed_means.append((c @ weighted.T) / (c @ w)[:, None])
    draws = np.concatenate(seed_means)
    if not np.all(np.isfinite(draws)):
        raise ValueError("a resample drew only sentences of weight 0; give more sentences a weight")
    seed_counts = np.random.default_rng([seed, SEED_SALT]).multinomial(
        num_seeds, np.full(num_seeds, 1.0 / num_seeds), size=n_bootstrap
    )
    two_level = (draws * seed_counts).sum(axis=1) / num_seeds

    per_seed_point = weighted.sum(axis=1) / w.sum()
    per_seed = tuple((float(per_seed_point[s]), *percentile_interval(draws[:, s], level)) for s in range(num_seeds))
    low, high = percentile_interval(two_level, level)
    return SeedSentenceInterval(
        point=float(per_seed_point.mean()),
        low=low,
        high=high,
        level=float(level),
        seeds=num_seeds,
        sentences=n,
        per_seed=per_seed,
    )
