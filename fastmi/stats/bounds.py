"""Mutual-information lower bounds from a probe's errors, in bits, with confidence values.

T is a token drawn at random from a sentence, z the layer's pooled embedding, M the size of T's
alphabet.  From a decoder's held-out top-1 error P_e, top-k error P_k and cross-entropy CE:

    Fano (top-1)        I(T;z) >= H(T) - h(P_e) - P_e log2(M-1)
    list Fano (top-k)   I(T;z) >= H(T) - h(P_k) - (1-P_k) log2 k - P_k log2(M-k)
    variational         I(T;z) >= H(T) - CE

Proofs and the sentence-level statements they imply are in docs/theory.md.  The formula functions
return the raw bound (negative means vacuous); :func:`layer_bounds` adds the confidence values,
clamps at 0 and says which values it clamped.  Every function gives a defined value at the edges
(P = 0, P past the bound's turning point, M = 1, k >= M, H(T) = 0) and never returns NaN.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from fastmi.results.columns import BOUNDS, ESTIMATES, fraction_column, ucb_column
from fastmi.stats.bootstrap import check_resamples, resample_counts, resampled_means
from fastmi.stats.joint import joint_bounds, with_seed_term

__all__ = [
    "binary_entropy_bits",
    "entropy_bits",
    "token_entropy_bits",
    "fano_lower_bound",
    "list_fano_lower_bound",
    "variational_lower_bound",
    "upper_confidence_mean",
    "clopper_pearson_upper",
    "layer_bounds",
    "with_seed_term",
    "BOUNDS",
    "CONFIDENCE_METHODS",
]

ENTROPY_METHODS = ("plugin", "miller_madow")
CONFIDENCE_METHODS = ("bootstrap", "percentile", "clopper_pearson")


def _array(x: Any, name: str) -> np.ndarray:
    """float64 numpy view of a number, sequence, numpy array or torch tensor; rejects NaN/inf."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a[~np.isfinite(a)].ravel()[:3]}")
    return a


def _scalar_or_array(a: np.ndarray) -> float | np.ndarray:
    return float(a) if a.ndim == 0 else a


def _probability(p: Any, name: str) -> np.ndarray:
    a = _array(p, name)
    if np.any((a < 0) | (a > 1)):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{a.min()}, {a.max()}]")
    return a


def _alphabet_size(m: Any) -> int:
    if isinstance(m, bool) or int(m) != m or int(m) < 1:
        raise ValueError(f"alphabet_size must be an integer >= 1, got {m!r}")
    return int(m)


def _xlog2y(x: np.ndarray, y: np.ndarray | float) -> np.ndarray:
    """x * log2(y) with 0 * log2(0) = 0 (the limit that every entropy term takes)."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    out = np.zeros(x.shape)
    live = x != 0
    out[live] = x[live] * np.log2(y[live])
    return out


# ---- entropies -----------------------------------------------------------------------------------
def binary_entropy_bits(p: Any) -> float | np.ndarray:
    """h(p) = -p log2 p - (1-p) log2(1-p), with h(0) = h(1) = 0."""
    p = _probability(p, "p")
    return _scalar_or_array(-_xlog2y(p, p) - _xlog2y(1 - p, 1 - p))


def entropy_bits(counts: Any, method: str = "plugin") -> float:
    """Entropy in bits of the distribution proportional to ``counts`` (nonnegative weights).

    ``method="plugin"`` is the entropy of the normalised counts.  ``"miller_madow"`` adds the
    first-order bias correction (m - 1) / (2 N ln 2), m the number of nonzero symbols and
    N = sum(counts), the sample size the counts stand for.  For :func:`token_entropy_bits` the
    weights are per-sentence token frequencies, so N is the number of sentences (see
    docs/theory.md).  No mass at all gives 0.
    """
    if method not in ENTROPY_METHODS:
        raise ValueError(f"method must be one of {ENTROPY_METHODS}, got {method!r}")
    c = _array(counts, "counts").ravel()
    if np.any(c < 0):
        raise ValueError(f"counts must be nonnegative, found {c.min()}")
    total = c.sum()
    if total == 0:
        return 0.0
    p = c[c > 0] / total
    h = max(float(-(p * np.log2(p)).sum()), 0.0)  # rounding can leave -1e-17 for one symbol
    if method == "miller_madow":
        h += (p.size - 1) / (2 * total * math.log(2))
    return h


def token_entropy_bits(targets, method: str = "plugin") -> float:
    """H(T) of a token drawn at random from a random sentence: p(t) = E_S[count_S(t) / n_S].

    The expectation runs over the non-empty rows of ``targets`` (a :class:`fastmi.BagTargets`);
    empty rows hold no token to draw.  For Miller-Madow, N = the number of non-empty rows.
    """
    lengths = targets.lengths.double()
    if not bool((lengths > 0).any()):
        return 0.0
    rows = targets.row_index
    share = targets.counts.double() / lengths[rows]  # count_S(t) / n_S, one entry per (row, id)
    size = int(targets.ids.max()) + 1
    weights = np.bincount(targets.ids.cpu().numpy(), weights=share.cpu().numpy(), minlength=size)
    return entropy_bits(weights, method=method)


# ---- the bounds ----------------------------------------------------------------------------------
def fano_lower_bound(p_error: Any, entropy_bits: Any, alphabet_size: int) -> float | np.ndarray:
    """Fano: I(T;z) >= H(T) - h(P_e) - P_e log2(M - 1), in bits; negative means vacuous.

    The right-hand side decreases in P_e up to (M-1)/M (where it equals H(T) - log2 M <= 0) and
    rises after; P_e is capped there, so the value is non-increasing in P_e and a bound at an
    upper confidence limit of P_e is the worst case over the whole confidence interval.
    M = 1 gives H(T) (nothing to confuse T with).
    """
    p, h_t, m = _probability(p_error, "p_error"), _array(entropy_bits, "entropy_bits"), _alphabet_size(alphabet_size)
    p = np.minimum(p, (m - 1) / m)
    return _scalar_or_array(h_t - binary_entropy_bits(p) - _xlog2y(p, m - 1))


def list_fano_lower_bound(p_error_k: Any, k: int, entropy_bits: Any, alphabet_size: int) -> float | np.ndarray:
    """List-decoding Fano: I(T;z) >= H(T) - h(P_k) - (1-P_k) log2 k - P_k log2(M - k), in bits.

    P_k is the probability that T is not among the decoder's k guesses.  The right-hand side
    decreases in P_k up to (M-k)/M (value H(T) - log2 M) and P_k is capped there.  A list of
    k >= M symbols holds the whole alphabet, so k is taken as min(k, M): the bound is then
    H(T) - log2 M <= 0, vacuous, as it must be (such a list says nothing about z).  k = 1 is Fano.
    """
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    p, h_t, m = (
        _probability(p_error_k, "p_error_k"),
        _array(entropy_bits, "entropy_bits"),
        _alphabet_size(alphabet_size),
    )
    k = min(int(k), m)
    p = np.minimum(p, (m - k) / m)
    return _scalar_or_array(h_t - binary_entropy_bits(p) - (1 - p) * math.log2(k) - _xlog2y(p, m - k))


def variational_lower_bound(cross_entropy_bits: Any, entropy_bits: Any) -> float | np.ndarray:
    """Barber-Agakov: I(T;z) >= H(T) - E[-log2 q(T|z)] for any decoder q, in bits."""
    ce, h_t = _array(cross_entropy_bits, "cross_entropy_bits"), _array(entropy_bits, "entropy_bits")
    if np.any(ce < 0):
        raise ValueError(f"cross_entropy_bits must be nonnegative, found {ce.min()}")
    return _scalar_or_array(h_t - ce)


# ---- confidence ----------------------------------------------------------------------------------
def clopper_pearson_upper(successes: int, n: int, level: float = 0.95) -> float:
    """Exact one-sided upper confidence limit for a binomial proportion.

    The p at which P(Binomial(n, p) <= successes) = 1 - level, i.e. the ``level`` quantile of
    Beta(successes + 1, n - successes); found by bisection on the binomial CDF, evaluated in log
    space, so no special functions are needed.
    """
    _check_level(level)
    if int(n) != n or n < 1 or int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"need integers 0 <= successes <= n, n >= 1; got successes={successes}, n={n}")
    x, n = int(successes), int(n)
    if x == n:
        return 1.0
    if x == 0:  # closed form: (1 - p)^n = 1 - level
        return float(-math.expm1(math.log1p(-level) / n))
    j = np.arange(1, x + 1, dtype=np.float64)
    log_binom = np.concatenate([[0.0], np.cumsum(np.log((n - j + 1) / j))])  # log C(n, 0..x)
    kk = np.arange(x + 1, dtype=np.float64)

    def cdf(p: float) -> float:
        terms = log_binom + kk * math.log(p) + (n - kk) * math.log1p(-p)
        top = terms.max()
        return math.exp(top) * float(np.exp(terms - top).sum())

    lo, hi = x / n, 1.0  # cdf(x/n) >= ~1/2 > 1 - level for any level > 1/2 ... and cdf(1) = 0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if cdf(mid) > 1 - level:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return hi


def _check_level(level: float) -> None:
    if not 0.5 <= level < 1:
        raise ValueError(f"level must be in [0.5, 1), got {level}")


def _bootstrap_means(values: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Means of ``n_bootstrap`` resamples of the columns (sentences) of ``values`` [s, n] -> [s, B].

    All rows share the same resamples, so the statistics of one layer are resampled jointly, and
    the same seed gives every layer and model the same resamples (common random numbers).
    """
    counts = resample_counts(values.shape[1], n_bootstrap, seed, stream="draws")
    return resampled_means(values.T, counts).T


def _bootstrap_upper(x: np.ndarray, means: np.ndarray, level: float, bca: bool) -> float:
    """Percentile or BCa (Efron 1987) upper limit of the mean of ``x`` from its bootstrap means."""
    theta = x.mean()
    quantile = level
    if bca:
        normal = NormalDist()
        # Resampled means that equal the estimate (common for 0/1 errors) count half; the
        # tolerance absorbs the rounding difference between the matrix product and x.mean().
        tie = 1e-12 * max(1.0, abs(theta))
        below = (np.count_nonzero(means < theta - tie) + 0.5 * np.count_nonzero(abs(means - theta) <= tie)) / means.size
        below = min(max(below, 0.5 / means.size), 1 - 0.5 / means.size)
        z0 = normal.inv_cdf(below)
        d = x - theta  # jackknife influence of each sentence on the mean, up to scale
        acceleration = float((d**3).sum() / (6 * (d**2).sum() ** 1.5))
        z = z0 + normal.inv_cdf(level)
        # 1 - a z <= 0 only for extreme skew in tiny samples: take the largest resample then.
        quantile = normal.cdf(z0 + z / (1 - acceleration * z)) if acceleration * z < 1 else 1.0
    return float(np.quantile(means, quantile))


def upper_confidence_mean(
    values: Any,
    level: float = 0.95,
    seed: int = 0,
    n_bootstrap: int = 2000,
    method: str = "bootstrap",
    value_range: tuple[float, float | None] = (0.0, 1.0),
) -> float:
    """One-sided upper confidence limit for the mean of i.i.d. ``values`` (one per sentence).

    ``method``: ``"bootstrap"`` (BCa: bias-corrected and accelerated, Efron 1987; default),
    ``"percentile"`` (plain percentile bootstrap), both seeded; or ``"clopper_pearson"`` (exact,
    for values in [0, 1]: one Bernoulli(value) draw per sentence, seeded, whose count gets the
    Clopper-Pearson limit; 0/1 values are used as they are).  ``value_range`` (lo, hi) is where
    the values are known to lie (hi None: unbounded); the limit is kept inside it.  When every value
    equals lo the bootstrap has nothing to resample, and the exact limit of that event is used:
    values in [lo, hi] with mean mu are all at lo with probability <= (1 - (mu-lo)/(hi-lo))^n.
    """
    _check_level(level)
    if method not in CONFIDENCE_METHODS:
        raise ValueError(f"method must be one of {CONFIDENCE_METHODS}, got {method!r}")
    x = _array(values, "values").ravel()
    if x.size == 0:
        raise ValueError("upper_confidence_mean needs at least one value")
    return float(_upper_limits(x[None, :], level, seed, n_bootstrap, method, [value_range])[0])


def _upper_limits(
    values: np.ndarray, level: float, seed: int, n_bootstrap: int, method: str, ranges: list
) -> np.ndarray:
    """Upper limits for each row of ``values`` [s, n]; rows share bootstrap resamples."""
    for row, (lo, hi) in zip(values, ranges):
        if np.any(row < lo) or (hi is not None and np.any(row > hi)):
            raise ValueError(f"values must lie in [{lo}, {hi}], got values in [{row.min()}, {row.max()}]")
    n_bootstrap = check_resamples(n_bootstrap)
    n = values.shape[1]
    means = None
    limits = np.empty(values.shape[0])
    for i, (row, (lo, hi)) in enumerate(zip(values, ranges)):
        if np.all(row == row[0]):  # a constant sample: the bootstrap cannot see any spread
            at_floor = hi is not None and row[0] == lo
            limits[i] = lo + (hi - lo) * clopper_pearson_upper(0, n, level) if at_floor else row[0]
        elif method == "clopper_pearson" and (lo, hi) == (0.0, 1.0):
            binary = np.all((row == 0) | (row == 1))
            draws = row if binary else np.random.default_rng(seed).random(n) < row
            limits[i] = clopper_pearson_upper(int(draws.sum()), n, level)
        else:  # the bootstrap; clopper_pearson falls back to BCa for values not in [0, 1]
            if means is None:
                means = _bootstrap_means(values, int(n_bootstrap), seed)
            limits[i] = _bootstrap_upper(row, means[i], level, bca=method != "percentile")
        limits[i] = max(limits[i], row.mean())  # an upper limit never sits below the estimate
        if hi is not None:
            limits[i] = min(limits[i], hi)
    return limits


# ---- one layer -----------------------------------------------------------------------------------
def layer_bounds(
    errors: Any,
    errors_k: Any,
    ce_bits: Any,
    entropy_bits: float,
    alphabet_size: int,
    k: int,
    level: float = 0.95,
    seed: int = 0,
    n_bootstrap: int = 2000,
    method: str = "bootstrap",
    seed_statistics: Any = None,
    entropy: Any = None,
) -> dict[str, Any]:
    """Every bound of one layer, point and lower-confidence values, from per-sentence statistics.

    ``errors``, ``errors_k`` [n]: per held-out sentence, 1 - count(t_hat)/n_S (top-1) and the same
    for the k best ids; ``ce_bits`` [n]: that sentence's bag cross-entropy in bits, over n_S.
    Means over sentences estimate P_e, P_k and CE; each bound's ``*_lcb`` plugs in the upper
    confidence limit (``method`` as in :func:`upper_confidence_mean`; the cross-entropy is unbounded,
    so it always uses the bootstrap, BCa unless method="percentile").  Bounds below 0 are reported as
    0 and named in ``clamped``.  ``*_frac`` is each bound over H(T) (0 when H(T) = 0).  The level is
    per value, not simultaneous over bounds or layers.

    ``seed_statistics`` [N, 3, n]: with N > 1 probes per layer (``probe_seeds``), each probe's
    per-sentence statistics; ``errors`` etc. are then their means over the N probes.  Each upper
    limit is then :func:`with_seed_term`'s, and ``probe_seeds`` and the ``*_seed_sd`` columns (each
    bound's spread over the seeds) are added.

    ``entropy``: a :class:`fastmi.stats.heldout_entropy.HeldOutEntropy` of these held-out sentences
    (drawn with the same ``seed`` and ``n_bootstrap``).  H(T) is then its point value and is
    resampled together with the error terms, so each ``*_lcb`` includes H's sampling error
    (:func:`fastmi.stats.joint.joint_lower_bounds`); the ``*_ucb`` columns stay the error terms' own.
    Without it H(T) is ``entropy_bits``, taken as known.
    """
    _check_level(level)
    h_t = float(_array(entropy_bits if entropy is None else entropy.point, "entropy_bits"))
    if h_t < 0:
        raise ValueError(f"entropy_bits must be nonnegative, got {h_t}")
    stats = [_array(a, name).ravel() for a, name in ((errors, "errors"), (errors_k, "errors_k"), (ce_bits, "ce_bits"))]
    if len({s.size for s in stats}) != 1 or stats[0].size == 0:
        raise ValueError(f"errors, errors_k and ce_bits need the same nonzero length, got {[s.size for s in stats]}")
    ranges = [(0.0, 1.0), (0.0, 1.0), (0.0, None)]
    upper = _upper_limits(np.stack(stats), level, seed, n_bootstrap, method, ranges)
    point = [float(s.mean()) for s in stats]
    seeds = None
    if seed_statistics is not None and len(seed_statistics) > 1:
        per_seed = np.asarray(seed_statistics, dtype=np.float64)  # [N, 3, n]
        seeds = per_seed.mean(axis=2)  # [N, 3]: each probe's held-out means
        halves = [_upper_limits(v, level, seed, n_bootstrap, method, ranges) - m for v, m in zip(per_seed, seeds)]
        upper = with_seed_term(np.asarray(point), np.max(halves, axis=0), seeds, level)
        upper = np.minimum(upper, [np.inf if hi is None else hi for _, hi in ranges])

    out: dict[str, Any] = {"H_T": h_t, "k": int(k)}
    for name, est, ucb in zip(ESTIMATES, point, upper):
        out[name], out[ucb_column(name)] = est, float(ucb)
    # Each bound from the estimate it needs: the point value from the mean, the lcb from its ucb.
    formulas = {
        "fano": lambda means: fano_lower_bound(means[0], h_t, alphabet_size),
        "list_fano": lambda means: list_fano_lower_bound(means[1], k, h_t, alphabet_size),
        "variational": lambda means: variational_lower_bound(means[2], h_t),
    }
    raw = {}
    for bound, (point_column, lcb_column) in BOUNDS.items():
        raw[point_column], raw[lcb_column] = formulas[bound](point), formulas[bound](upper)
    if entropy is not None:
        args = (alphabet_size, k, level, seed, n_bootstrap, method)
        joint_bounds(raw, np.stack(stats), entropy, *args, seeds, seed_statistics)
    for name, value in raw.items():
        out[name] = max(float(value), 0.0)
    for name in raw:
        out[fraction_column(name)] = out[name] / h_t if h_t > 0 else 0.0
    out["level"] = float(level)
    out["clamped"] = ",".join(name for name, value in raw.items() if value < 0)
    if seeds is not None and seeds.shape[0] > 1:
        out["probe_seeds"] = int(seeds.shape[0])
        for bound in BOUNDS:
            out[f"{bound}_seed_sd"] = float(np.std([formulas[bound](m) for m in seeds], ddof=1))
    return out
