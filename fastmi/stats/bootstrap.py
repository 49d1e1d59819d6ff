"""The seeded bootstrap over sentences that every interval of fastmi is drawn from.

A resample draws n sentences with replacement from the n held-out ones; a statistic recomputed on
each of B resamples gives its sampling spread.  Resamples are held as counts ([B, n]: how often
each sentence is drawn), so that the means of every per-sentence quantity come out of one matrix
product, much faster than gathering rows.  A seed fixes the resamples, so equal seeds give equal
numbers on any machine, and two layers or models resampled with one seed share their resamples
(common random numbers: what pairing needs).

Two random streams exist, each kept so that published numbers reproduce:

* ``"draws"``: ``default_rng(seed)``, n uniform sentence indices per resample, in order.  The
  confidence limits of the bounds (:mod:`fastmi.stats.bounds`) and the fine-tuning intervals
  (:func:`bootstrap_interval`) use it.
* ``"paired"``: ``default_rng([seed, PAIRED_SALT])``, one multinomial count vector per resample.
  Paired comparisons and the claims (:mod:`fastmi.stats.comparison`, :mod:`fastmi.stats.claims`)
  use it.  Both streams have the same distribution; only the numbers drawn differ.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

import numpy as np

__all__ = [
    "STREAMS",
    "check_resamples",
    "resample_counts",
    "resampled_rows",
    "resampled_means",
    "percentile_interval",
    "bootstrap_interval",
    "paired_counts",
    "paired_bootstrap",
]

STREAMS = ("draws", "paired")
PAIRED_SALT = 0x70616972  # "pair": a stream apart from the bounds' one under the same seed
MIN_RESAMPLES = 100
# Counts of up to this many (n x B) entries are drawn once and kept, since every layer of a model
# and every pair of a comparison reuses them.
_CACHE_ENTRIES = 64 * 2**20
# Indices (resamples x n) drawn per block of the "draws" stream: bounds the memory of one block.
_BLOCK_ENTRIES = 2_000_000


def check_resamples(n_bootstrap: int) -> int:
    if int(n_bootstrap) < MIN_RESAMPLES:
        raise ValueError(f"n_bootstrap must be at least {MIN_RESAMPLES}, got {n_bootstrap}")
    return int(n_bootstrap)


def _index_blocks(n: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """The "draws" stream: [rows, n] int64 blocks of sentence indices, one resample per row."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_bootstrap, _BLOCK_ENTRIES // n))
    for start in range(0, n_bootstrap, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))


def _draw_counts(n: int, n_bootstrap: int, seed: int, stream: str) -> Iterator[np.ndarray]:
    """The counts of ``stream`` in [rows, n] blocks, one byte per count where all fit (kept sets stay small)."""
    if stream == "paired":
        rng = np.random.default_rng([seed, PAIRED_SALT])
        yield _compact(rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap))
        return
    for idx in _index_blocks(n, n_bootstrap, seed):
        rows = idx.shape[0]
        flat = idx + n * np.arange(rows)[:, None]
        yield _compact(np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n))


def _compact(counts: np.ndarray) -> np.ndarray:
    # A count above 255 (probability below 1e-400 for n >= 256) keeps its int64 block.
    return counts.astype(np.uint8) if counts.max() <= 255 else counts


@functools.lru_cache(maxsize=1)
def _kept_counts(n: int, n_bootstrap: int, seed: int, stream: str) -> tuple[np.ndarray, ...]:
    return tuple(_draw_counts(n, n_bootstrap, seed, stream))


def resample_counts(n: int, n_bootstrap: int, seed: int, stream: str = "draws") -> Iterable[np.ndarray]:
    """[rows, n] blocks (B rows in all) of how often each of n sentences is drawn in each resample.

    Integer counts; small sets are drawn once and kept, large ones drawn block by block.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    if n * n_bootstrap <= _CACHE_ENTRIES:
        return _kept_counts(n, n_bootstrap, seed, stream)
    return _draw_counts(n, n_bootstrap, seed, stream)


def resampled_rows(n: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """The sentence indices [n] of each resample of the "draws" stream, one resample at a time."""
    for block in _index_blocks(n, n_bootstrap, seed):
        yield from block


def resampled_means(values: np.ndarray, counts) -> np.ndarray:
    """Column means [B, s] of ``values`` [n, s] (one row per sentence) over each resample of ``counts``."""
    n = values.shape[0]
    return np.concatenate([(c.astype(np.float64) @ values) / n for c in counts])


def percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """Two-sided percentile interval at ``level`` of a statistic's resampled values."""
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], num_rows: int, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(point, low, high)``: ``statistic(rows)`` on all rows and the percentile interval of it over
    seeded resamples of the rows (pass a difference of two models' statistics for a paired one).

    For any statistic of the row indices (a ratio of sums, a classifier's accuracy); a function of
    column means is faster with :func:`paired_bootstrap`.
    """
    point = float(statistic(np.arange(num_rows)))
    draws = np.array([statistic(rows) for rows in resampled_rows(num_rows, int(resamples), seed)])
    return (point, *percentile_interval(draws, level))


def paired_counts(n: int, n_bootstrap: int, seed: int) -> tuple[np.ndarray, ...]:
    """The "paired" stream's counts for n shared sentences (at least 2: a difference needs a spread)."""
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 shared held-out sentences, got {n}")
    return tuple(resample_counts(n, check_resamples(n_bootstrap), seed, stream="paired"))


def paired_bootstrap(
    values: np.ndarray,
    statistic,
    level: float = 0.95,
    n_bootstrap: int = 2000,
    seed: int = 0,
    counts=None,
) -> tuple[float, float, float]:
    """Point value and two-sided percentile interval at ``level`` of ``statistic(means)``.

    ``values`` [n, s]: one row per sentence (the pairing), one column per per-sentence quantity;
    ``statistic`` maps column means [..., s] to a value [...]: it sees the observed means once and
    the means of every resample of rows ("paired" stream, unless ``counts`` are given).
    """
    if not 0.5 <= level < 1:
        raise ValueError(f"level must be in [0.5, 1), got {level}")
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if counts is None:
        counts = paired_counts(n, n_bootstrap, seed)
    point = float(statistic(values.mean(axis=0)))
    draws = np.asarray(statistic(resampled_means(values, counts)), dtype=np.float64)
    return (point, *percentile_interval(draws, level))
