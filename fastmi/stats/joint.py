"""Lower confidence values of the bounds with H(f(T)) resampled together with the error terms.

Each bound is H minus an error term (section 3 of docs/theory.md); both are means over the held-out
sentences, so each bootstrap resample gives one value of the bound, H_r - error_r, from the same
sentences.  The lower confidence value is the BCa (or percentile) lower quantile of those values,
with the acceleration from each sentence's influence on the bound (H's influence,
-sum_t f_S(t) log2 p(t) - H, plus the error term's).  Two cases have no usable joint resampling: an
error term constant over the sentences (the bootstrap sees no spread in it) and
``method="clopper_pearson"``; there the error term's exact upper limit and H's lower limit, each at
level 1 - alpha/2, are combined (Bonferroni), which covers both at once with probability >= 1 - alpha.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from fastmi.stats.heldout_entropy import HeldOutEntropy

__all__ = ["joint_lower_bounds", "joint_bounds", "lower_quantile", "with_seed_term"]


def lower_quantile(draws: np.ndarray, theta: float, influence: np.ndarray, level: float, bca: bool) -> float:
    """Lower limit at ``level`` of a statistic from its bootstrap ``draws``: percentile, or BCa with the
    bias correction from the draws and the acceleration from the sentences' ``influence``."""
    alpha = 1 - level
    if not bca:
        return float(np.quantile(draws, alpha))
    normal = NormalDist()
    tie = 1e-12 * max(1.0, abs(theta))
    below = (np.count_nonzero(draws < theta - tie) + 0.5 * np.count_nonzero(abs(draws - theta) <= tie)) / draws.size
    below = min(max(below, 0.5 / draws.size), 1 - 0.5 / draws.size)
    z0 = normal.inv_cdf(below)
    spread = float((influence**2).sum())
    acceleration = float((influence**3).sum() / (6 * spread**1.5)) if spread > 0 else 0.0
    z = z0 + normal.inv_cdf(alpha)
    quantile = normal.cdf(z0 + z / (1 - acceleration * z)) if acceleration * z < 1 else 0.0
    return float(np.quantile(draws, quantile))


def joint_lower_bounds(
    stats: np.ndarray,
    entropy: HeldOutEntropy,
    formulas: dict[str, Any],
    uses: dict[str, int],
    level: float,
    seed: int,
    n_bootstrap: int,
    method: str,
) -> dict[str, tuple[float, float]]:
    """Per bound, (point, lower confidence value), both unclamped.  ``stats`` [3, n]: per-sentence top-1
    error, top-k error, cross-entropy; ``formulas[bound](means [3, ...], H [...])``; ``uses[bound]``:
    the row of ``stats`` its error term reads."""
    from fastmi.stats.bounds import _bootstrap_means, _upper_limits

    means = _bootstrap_means(stats, n_bootstrap, seed)  # [3, B], the resamples H was drawn with
    if means.shape[1] != entropy.draws.size:
        raise ValueError(f"{entropy.draws.size} entropy resamples for {means.shape[1]} resamples of the scores")
    point_stats = stats.mean(axis=1)
    ranges = [(0.0, 1.0), (0.0, 1.0), (0.0, None)]
    out = {}
    for bound, formula in formulas.items():
        row = uses[bound]
        point = float(formula(point_stats, entropy.point))
        constant = bool(np.all(stats[row] == stats[row][0]))
        if constant or (method == "clopper_pearson" and row < 2):
            split = 1 - (1 - level) / 2
            upper = point_stats.copy()
            upper[row] = _upper_limits(stats[row][None, :], split, seed, n_bootstrap, method, [ranges[row]])[0]
            h_low = lower_quantile(entropy.draws, entropy.point, entropy.influence, split, method != "percentile")
            lower = float(formula(upper, min(h_low, entropy.point)))
        else:
            draws = np.asarray(formula(means, entropy.draws), dtype=np.float64)
            high, low = point_stats.copy(), point_stats.copy()
            high[row] = point_stats[row] + 1e-6 if row == 2 else min(point_stats[row] + 1e-6, 1.0)
            low[row] = max(point_stats[row] - 1e-6, 0.0)
            rise = float(formula(high, entropy.point)) - float(formula(low, entropy.point))
            slope = rise / (high[row] - low[row])
            influence = entropy.influence + slope * (stats[row] - point_stats[row])
            lower = lower_quantile(draws, point, influence, level, method != "percentile")
        out[bound] = (point, min(lower, point))
    return out


def joint_bounds(raw, stats, entropy, alphabet_size, k, level, seed, n_bootstrap, method, seeds, per_seed) -> None:
    """Replace the lcbs in ``raw`` by the joint ones (H resampled too); with several probes, each
    bound's sentence term is the largest over the seeds and their mean, and the seed term is added."""
    from fastmi.results.columns import BOUNDS
    from fastmi.stats.bounds import fano_lower_bound, list_fano_lower_bound

    formulas = {
        "fano": lambda m, h: fano_lower_bound(np.clip(m[0], 0, 1), h, alphabet_size),
        "list_fano": lambda m, h: list_fano_lower_bound(np.clip(m[1], 0, 1), k, h, alphabet_size),
        "variational": lambda m, h: h - m[2],
    }
    uses = {"fano": 0, "list_fano": 1, "variational": 2}
    found = [joint_lower_bounds(stats, entropy, formulas, uses, level, seed, n_bootstrap, method)]
    if seeds is not None and seeds.shape[0] > 1:
        per_seed = np.asarray(per_seed, dtype=np.float64)
        found += [joint_lower_bounds(v, entropy, formulas, uses, level, seed, n_bootstrap, method) for v in per_seed]
    z = NormalDist().inv_cdf(level)
    for bound, (point_column, lcb_column) in BOUNDS.items():
        point = found[0][bound][0]
        half = max(p - low for p, low in (f[bound] for f in found))
        if len(found) > 1:
            values = [formulas[bound](m, entropy.point) for m in seeds]
            half = math.sqrt(half**2 + z**2 * float(np.var(values, ddof=1)) / len(values))
        raw[point_column], raw[lcb_column] = point, point - half


def with_seed_term(point: np.ndarray, half: np.ndarray, seed_means: np.ndarray, level: float) -> np.ndarray:
    """Upper limits of means over N probes (seeds): the sentences' and the seeds' terms in quadrature.

    ``half``: the sentence term, the largest over the seeds of each single probe's bootstrap
    half-width (upper limit minus mean), never narrower than one probe's interval.  The seed term:
    the bootstrap holds the probes fixed, a rerun would train N others; with s the spread over seeds
    of each probe's held-out mean, the mean over N seeds varies by s^2 / N.  The limit is
    ``point + sqrt(half^2 + (z s)^2 / N)``, z the one-sided normal quantile of ``level``
    (docs/theory.md §5).
    """
    n = seed_means.shape[0]
    z = NormalDist().inv_cdf(level)
    seed_half = z * seed_means.std(axis=0, ddof=1) / math.sqrt(n)
    return point + np.sqrt(np.asarray(half) ** 2 + seed_half**2)
