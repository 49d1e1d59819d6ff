"""H(f(T)) estimated on the held-out sentences, resample by resample (docs/theory.md §5-6).

The bounds are H(f(T)) minus a decoder's error term, and both halves are estimated from the
held-out sentences.  So H is computed inside the same bootstrap resamples as the error terms: for
each resample, the plug-in entropy of p(t) = mean over the resample's sentences of c_S(t) / n_S.
A lower confidence value of a bound is then a quantile of (H - error term) over the resamples, and
includes H's sampling error together with its correlation with the error term.

The held-out bags are kept as sparse per-sentence frequencies (sentence, symbol, c_S(t) / n_S),
about 10-20 entries per sentence, so a result can carry them for paired comparisons.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Frequencies", "HeldOutEntropy", "ESTIMATOR"]

#: What every result's config names as its H(f(T)) estimator.
ESTIMATOR = "{method} entropy of f(T) on the held-out sentences, recomputed in each bootstrap resample"
_BLOCK_ENTRIES = 4_000_000  # resamples x entries per block of the resampled frequencies


@dataclass(frozen=True)
class Frequencies:
    """Per-sentence frequencies of the held-out bags: entry e is sentence ``rows[e]`` (0..n-1),
    symbol ``ids[e]``, weight c_S(t) / n_S; ``n`` sentences, all non-empty."""

    rows: np.ndarray
    ids: np.ndarray
    weights: np.ndarray
    n: int

    @classmethod
    def of(cls, bags) -> Frequencies:
        """From :class:`fastmi.data.bags.BagTargets` whose rows are all non-empty."""
        lengths = bags.lengths.double().cpu().numpy()
        if np.any(lengths <= 0):
            raise ValueError("held-out frequencies need non-empty sentences")
        rows = bags.row_index.cpu().numpy().astype(np.int64)
        weights = bags.counts.double().cpu().numpy() / lengths[rows]
        return cls(rows, bags.ids.cpu().numpy().astype(np.int64), weights, int(bags.num_rows))

    def select(self, positions: np.ndarray) -> Frequencies:
        """The sentences at ``positions`` (ascending), renumbered 0..len-1."""
        new = np.full(self.n, -1, dtype=np.int64)
        new[positions] = np.arange(len(positions))
        keep = new[self.rows] >= 0
        return Frequencies(new[self.rows[keep]], self.ids[keep], self.weights[keep], len(positions))

    def marginal(self) -> tuple[np.ndarray, np.ndarray]:
        """(symbols, p) of the pooled held-out frequencies: p(t) = mean over sentences."""
        symbols, inverse = np.unique(self.ids, return_inverse=True)
        return symbols, np.bincount(inverse, weights=self.weights, minlength=symbols.size) / self.n

    def to_dict(self) -> dict:
        encode = lambda a, t: base64.b64encode(np.ascontiguousarray(a, dtype=t).tobytes()).decode()  # noqa: E731
        return {
            "n": self.n,
            "rows": encode(self.rows, "<i4"),
            "ids": encode(self.ids, "<i4"),
            "weights": encode(self.weights, "<f8"),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Frequencies:
        decode = lambda k, t: np.frombuffer(base64.b64decode(data[k].encode()), dtype=t)  # noqa: E731
        return cls(
            decode("rows", "<i4").astype(np.int64),
            decode("ids", "<i4").astype(np.int64),
            decode("weights", "<f8").astype(np.float64),
            int(data["n"]),
        )


def _entropy(p: np.ndarray, n: int, method: str) -> np.ndarray:
    """Entropy (bits) of each row of ``p`` [..., U]; Miller-Madow adds (m - 1) / (2 n ln 2)."""
    safe = np.where(p > 0, p, 1.0)
    h = np.maximum(-(p * np.log2(safe)).sum(-1), 0.0)
    if method == "miller_madow":
        h = h + ((p > 0).sum(-1) - 1) / (2 * n * math.log(2))
    return h


@dataclass(frozen=True)
class HeldOutEntropy:
    """H(f(T)) on the held-out sentences: its point value, one value per bootstrap resample, and each
    sentence's influence on it (for the BCa acceleration)."""

    point: float
    draws: np.ndarray  # [B]
    influence: np.ndarray  # [n]
    method: str

    @classmethod
    def estimate(cls, freq: Frequencies, counts: Iterable[np.ndarray], method: str = "plugin") -> HeldOutEntropy:
        """``counts``: the resamples ([rows, n] blocks of how often each sentence is drawn), the very
        ones the error terms are resampled with."""
        symbols, p = freq.marginal()
        column = np.searchsorted(symbols, freq.ids)
        order = np.argsort(column, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(column[order]) != 0])
        rows_sorted, weights_sorted = freq.rows[order], freq.weights[order]
        draws = []
        for block in counts:
            step = max(1, _BLOCK_ENTRIES // max(rows_sorted.size, 1))
            for begin in range(0, block.shape[0], step):
                part = block[begin : begin + step].astype(np.float64)
                resampled = np.add.reduceat(part[:, rows_sorted] * weights_sorted, starts, axis=1) / freq.n
                draws.append(_entropy(resampled, freq.n, method))
        # Influence of sentence S on the plug-in entropy: -sum_t f_S(t) log2 p(t) - H.
        point = float(_entropy(p, freq.n, method))
        plugin = float(_entropy(p, freq.n, "plugin"))
        per_sentence = np.bincount(freq.rows, weights=-freq.weights * np.log2(p[column]), minlength=freq.n)
        return cls(point, np.concatenate(draws), per_sentence - plugin, method)
