"""Intervals for a seed x sentence design: two arms paired on training seed and held-out sentence.

In the third claim's test (docs/finetune.md) every arm is fine-tuned once per seed and every run is
scored on the same N held-out sentences.  An arm's figure is then the mean over its S runs, and a
bootstrap over sentences alone treats those S runs as fixed: its interval leaves out the
run-to-run spread of training (initialisation, data order, masking), which a verdict must carry.

:func:`two_level_interval` gives the seed-averaged difference an interval from two variance parts:

* the seed part, v_seed = s²_seed / S: s²_seed is the sample variance of the S per-seed mean
  differences.  They are all taken on the same sentences, so it holds the seed-to-seed spread and
  the seed x sentence interaction, not the sentences' own sampling error; S - 1 degrees of freedom;
* the sentence part, v_sent: the variance of the seed-averaged difference over bootstrap resamples
  of the sentences.  One sentence draw per resample, shared by every seed and both arms: the
  sentences are the same in every run (a crossed design), so their sampling error is common to all
  runs and does not average out over seeds; N - 1 degrees of freedom.

The half-width is sqrt(t(S - 1)² v_seed + t(N - 1)² v_sent), each part scaled by its own Student-t
quantile at ``level``: exact t where either part is alone, and in between within about 1% in width
of the Behrens-Fisher (fiducial) interval of the sum, in our simulations.  Why not the alternatives,
measured on simulated crossed data (N = 150; the figures are in docs/finetune.md):

* a percentile bootstrap over seeds (this module's first version): 3 seeds give ten distinct seed
  draws and a spread shrunk by (S - 1) / S; at nominal 95% it covered 0.735 at S = 3 and 0.897 at
  S = 8 where the seed-to-seed spread is as large as the sentences';
* one t quantile at Welch-Satterthwaite degrees of freedom: when the few seeds happen to agree, v_seed
  comes out small and the degrees of freedom large just when the quantile should stay heavy; at
  99.75% and S = 3 it missed 1.2-2.4% of the time instead of 0.25%, at 95% up to 7.8%.

Both parts hold the interaction's share sigma²_sxi / (S N), so it is counted twice.  We keep it:
the error is on the wide side, at most twice the variance where the interaction is all there is
(nominal 95% then covers 0.994 at 3 seeds), and small beside the sentence part where sentences
differ much; removing it would subtract an estimated mean square, which can turn the variance
negative and has no sound degrees of freedom.

With one seed there is no seed part to estimate, and the interval is exactly the paired sentence
bootstrap :func:`fastmi.stats.bootstrap.bootstrap_interval` of the mean difference (percentile, the
library's "draws" stream); each seed's own paired interval (``per_seed``) comes from the same
resamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastmi.stats.bootstrap import check_resamples, percentile_interval, resample_counts

__all__ = [
    "SeedSentenceInterval",
    "two_level_interval",
    "bonferroni_level",
    "seed_by_sentence",
    "student_t_quantile",
]

MIN_TAIL_DRAWS = 10  # resamples beyond each limit, at least: fewer make the percentile a coin toss


@dataclass(frozen=True)
class SeedSentenceInterval:
    """Mean over seeds of the arms' (weighted) mean difference, its two-level interval at ``level``
    (module docstring), and each seed's own sentence-paired ``(point, low, high)`` at the same level."""

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


def student_t_quantile(level: float, df: float) -> float:
    """The t such that P(|T| <= t) = ``level`` for Student's T with ``df`` >= 1 degrees of freedom.

    numpy alone (scipy is no dependency): with T = sqrt(df) tan(phi), phi's density is proportional
    to cos(phi)^(df - 1) on [0, pi/2), bounded for df >= 1, so a fine grid integrates it."""
    if not 0.0 < level < 1.0 or not df >= 1.0:
        raise ValueError(f"need 0 < level < 1 and df >= 1, got {level!r}, {df!r}")
    # Past 12 / sqrt(df) the density is below exp(-70): the grid stays on the mass for any df.
    phi = np.linspace(0.0, min(math.pi / 2, 12.0 / math.sqrt(df)), 2**16 + 1)
    density = np.cos(phi) ** (df - 1.0)
    mass = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    return float(math.sqrt(df) * math.tan(np.interp(level * mass[-1], mass, phi)))


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
    arms; a per-token loss is the sentence's mean loss weighted by its token count, and then each
    seed's figure is sum(nll) / sum(tokens), in the data and in every resample, as a pooled
    per-token loss should be.

    Point: the mean over seeds of each seed's weighted mean difference.  Interval (S >= 2): point
    +- sqrt(t(S - 1)² s²_seed / S + t(N - 1)² v_sent), v_sent the variance over ``n_bootstrap``
    sentence resamples of the seed-averaged difference (module docstring); with S = 1, the
    percentile interval of the paired sentence bootstrap.
    The seeds' own intervals are percentile intervals of ``n_bootstrap`` sentence resamples.
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

    per_seed_point = weighted.sum(axis=1) / w.sum()  # each seed's figure (a ratio of sums if weighted)
    per_seed = tuple((float(per_seed_point[s]), *percentile_interval(draws[:, s], level)) for s in range(num_seeds))
    point = float(per_seed_point.mean())
    if num_seeds == 1:
        low, high = percentile_interval(draws[:, 0], level)
    else:
        seed_part = per_seed_point.var(ddof=1) / num_seeds
        sentence_part = draws.mean(axis=1).var(ddof=1)  # the shared sentence draw's spread
        half = math.sqrt(
            student_t_quantile(level, num_seeds - 1) ** 2 * seed_part
            + student_t_quantile(level, n - 1) ** 2 * sentence_part
        )
        low, high = point - half, point + half
    return SeedSentenceInterval(
        point=point,
        low=low,
        high=high,
        level=float(level),
        seeds=num_seeds,
        sentences=n,
        per_seed=per_seed,
    )
