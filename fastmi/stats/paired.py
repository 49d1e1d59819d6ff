"""The paired interval behind ``fastmi compare`` and ``report --claims`` (docs/theory.md §5).

A compared quantity is a weighted sum of bounds, sum_i w_i B_i, each B_i = H_i - error term_i of one
(model, layer), all estimated on the held-out sentences the models share.  One paired bootstrap
resample of those sentences gives one value of every error term and, from the models' held-out
bags, of every H_i (the plug-in entropy of f(T) over the resample,
:mod:`fastmi.stats.heldout_entropy`), so the interval includes H's sampling error.  With several
probes per layer (``probe_seeds``) the seeds' terms are added (:func:`paired_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from fastmi.stats.bootstrap import percentile_interval, resampled_means
from fastmi.stats.heldout import STATISTICS
from fastmi.stats.heldout_entropy import HeldOutEntropy

__all__ = ["paired_interval", "seed_variance"]


def seed_variance(result: Any, ref: Any, value) -> float:
    """Between-seed variance s^2 / N of ``value`` (a function of the three means) averaged over a
    layer's N probes (``probe_seeds``), from each seed's held-out means; 0 with one probe."""
    means = result.held_out[ref.model].seed_means(ref.layer)
    if means is None:
        return 0.0
    values = np.asarray(value(means), dtype=np.float64)
    return float(values.var(ddof=1) / values.size)


def _columns(result: Any, refs: Sequence[Any], rows: np.ndarray, seed: int | None = None) -> np.ndarray:
    """[n, 3 * len(refs)]: each layer's per-sentence statistics on ``rows`` (of its probe of seed
    index ``seed``, or their mean over the seeds)."""
    blocks = []
    for ref in refs:
        stats = result.held_out[ref.model].on_rows(ref.layer, rows, seed)
        blocks.append(np.column_stack([stats[s] for s in STATISTICS]))
    return np.hstack(blocks)


def _entropies(result: Any, refs: Sequence[Any], rows: np.ndarray, counts) -> dict[str, HeldOutEntropy]:
    """Per model with held-out bags in the result: H(f(T)) on the shared ``rows`` and in each resample."""
    out = {}
    for model in dict.fromkeys(ref.model for ref in refs):
        held = result.held_out[model]
        if held.frequencies is None:
            continue
        method = (result.model_config(model) or {}).get("entropy_method", "plugin")
        freq = held.frequencies.select(np.searchsorted(held.rows, rows))
        out[model] = HeldOutEntropy.estimate(freq, counts, method)
    return out


def paired_interval(result, refs, functions, weights, rows, level, n_bootstrap, seed, counts) -> tuple:
    """(point, lower, upper): sum_i ``weights[i]`` * ``functions[i]``(means, H) over the shared
    ``rows``, with its two-sided percentile interval at ``level`` over the paired resamples ``counts``
    (the error terms and, where the result holds the held-out bags, H resampled together; results
    made before they were kept use the table's H_T, fixed).

    With several probes per layer, each side's half-width is the largest over the seed-averaged
    statistics and each seed's own probes (seed j of every layer together), combined in quadrature
    with z times the between-seed standard error, sqrt(sum_i w_i^2 s_i^2 / N_i)."""
    entropies = _entropies(result, refs, rows, counts)
    width = len(STATISTICS)

    def statistic(means: np.ndarray, draws: bool) -> np.ndarray:
        total = 0.0
        for i, (ref, f, w) in enumerate(zip(refs, functions, weights)):
            h = entropies.get(ref.model)
            value = None if h is None else (h.draws if draws else h.point)
            total = total + w * f(means[..., i * width : (i + 1) * width], value)
        return np.asarray(total, dtype=np.float64)

    def interval(values: np.ndarray) -> tuple[float, float, float]:
        point = float(statistic(values.mean(axis=0), False))
        return (point, *percentile_interval(statistic(resampled_means(values, counts), True), level))

    point, lower, upper = interval(_columns(result, refs, rows))
    n_seeds = max(result.held_out[ref.model].num_seeds(ref.layer) for ref in refs)
    if n_seeds < 2:
        return point, lower, upper
    below, above = [point - lower], [upper - point]
    for j in range(n_seeds):
        pj, lj, uj = interval(_columns(result, refs, rows, j))
        below.append(pj - lj)
        above.append(uj - pj)
    variance = sum(w * w * seed_variance(result, ref, f) for ref, f, w in zip(refs, functions, weights))
    extra = NormalDist().inv_cdf((1 + level) / 2) ** 2 * variance
    return point, point - math.sqrt(max(below) ** 2 + extra), point + math.sqrt(max(above) ** 2 + extra)
