"""Coverage, by simulation on closed-form channels (docs/theory.md §5-6).

A Zipf source T over q symbols sent through a q-ary symmetric channel; z is the channel's output
(one token per sentence).  The decoder is fixed before any data set is drawn (a tempered posterior,
so that its bounds are not tight), so the population value of each of its bounds is known in closed
form, H(T) - CE(q) and the Fano forms at its population error rates, and so is I(T; z).  Over many
simulated held-out sets:

* each 95% lcb (H resampled with the error terms) lies above the population value of the same fixed
  probe's bound in at most 5% of the sets, plus Monte Carlo slack (a binomial 99.9% limit);
* no lcb lies above the true I(T; z);
* compare's paired 95% intervals (two channels on the same sentences) miss the known difference of
  the population bounds in at most 5% of the sets, plus the same slack, in bits and as fractions of
  H (where H's own error enters).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.stats.bootstrap import resample_counts
from fastmi.stats.bounds import fano_lower_bound, layer_bounds, list_fano_lower_bound
from fastmi.stats.heldout import HeldOut
from fastmi.stats.heldout_entropy import Frequencies, HeldOutEntropy

DATA_SETS = 200
RESAMPLES = 400
K = 3
BOUNDS = ("fano", "list_fano", "variational")


def allowed_misses(trials: int, rate: float = 0.05, confidence: float = 0.999) -> int:
    """The smallest c with P(Binomial(trials, rate) > c) < 1 - confidence."""
    total = 0.0
    for c in range(trials + 1):
        total += math.comb(trials, c) * rate**c * (1 - rate) ** (trials - c)
        if 1 - total < 1 - confidence:
            return c
    return trials


class Channel:
    """Zipf(s) source over q symbols, q-ary symmetric channel with error eps, tempered decoder."""

    def __init__(self, q: int, eps: float, zipf: float = 1.0, temper: float = 0.7):
        p = 1.0 / np.arange(1, q + 1) ** zipf
        self.q, self.p = q, p / p.sum()
        self.transition = np.full((q, q), eps / (q - 1))
        np.fill_diagonal(self.transition, 1 - eps)
        joint = self.p[:, None] * self.transition  # [t, z]
        self.joint = joint
        pz = joint.sum(0)
        self.h = float(-(self.p * np.log2(self.p)).sum())
        self.mi = float((joint * np.log2(joint / (self.p[:, None] * pz[None, :]))).sum())
        # The decoder: the posterior p(t | z), tempered (a fixed, deliberately imperfect probe).
        logits = temper * np.log(joint / pz[None, :]).T  # [z, t]
        self.log2q = (logits - np.log(np.exp(logits).sum(1, keepdims=True))) / math.log(2)
        order = np.argsort(-self.log2q, axis=1, kind="stable")
        self.top1, self.topk = order[:, 0], order[:, :K]

    def population(self) -> dict[str, float]:
        """The fixed decoder's population error rates, cross-entropy and bounds."""
        m = self.joint.T  # [z, t]
        z_index = np.arange(self.q)
        p_e = 1 - m[z_index, self.top1].sum()
        p_k = 1 - np.take_along_axis(m, self.topk, 1).sum()
        ce = -(m * self.log2q).sum()
        return {
            "fano": float(fano_lower_bound(p_e, self.h, self.q)),
            "list_fano": float(list_fano_lower_bound(p_k, K, self.h, self.q)),
            "variational": self.h - ce,
        }

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        t = rng.choice(self.q, size=n, p=self.p)
        z = np.array([rng.choice(self.q, p=self.transition[s]) for s in t])
        return t, z

    def scores(self, t: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "errors": (self.top1[z] != t).astype(float),
            "errors_k": (~(self.topk[z] == t[:, None]).any(1)).astype(float),
            "ce_bits": -self.log2q[z, t],
        }


def single_token_bags(t: np.ndarray) -> BagTargets:
    n = t.size
    return BagTargets(np.arange(n + 1), t, np.ones(n, dtype=np.int64))


@pytest.mark.parametrize("q, eps, n", [(16, 0.3, 300), (64, 0.4, 500)])
def test_lcbs_cover_the_fixed_probes_population_bound(q, eps, n):
    channel = Channel(q, eps)
    population = channel.population()
    assert all(0 < population[b] < channel.mi for b in BOUNDS)
    rng = np.random.default_rng(q)
    misses = dict.fromkeys(BOUNDS, 0)
    for trial in range(DATA_SETS):
        t, z = channel.draw(n, rng)
        s = channel.scores(t, z)
        freq = Frequencies.of(single_token_bags(t))
        entropy = HeldOutEntropy.estimate(freq, resample_counts(n, RESAMPLES, trial, "draws"))
        row = layer_bounds(
            s["errors"], s["errors_k"], s["ce_bits"], 0.0, q, K, seed=trial, n_bootstrap=RESAMPLES, entropy=entropy
        )
        for bound in BOUNDS:
            assert row[f"{bound}_lcb"] <= channel.mi, (bound, trial)
            misses[bound] += row[f"{bound}_lcb"] > population[bound]
    limit = allowed_misses(DATA_SETS)
    assert all(count <= limit for count in misses.values()), (misses, limit)


def paired_result(a: Channel, b: Channel, t, za, zb) -> fastmi.RecoverabilityResult:
    """One model with two layers: channel a's and channel b's outputs for the same tokens."""
    n = t.size
    held = HeldOut(rows=np.arange(n, dtype=np.int64), frequencies=Frequencies.of(single_token_bags(t)))
    held.add(0, **a.scores(t, za))
    held.add(1, **b.scores(t, zb))
    h = HeldOutEntropy.estimate(held.frequencies, [np.ones((1, n), dtype=np.int64)]).point
    rows = [
        {"model": "m", "layer": layer, "rel_depth": layer / 1, "H_T": h, "M": a.q, "k": K, "n_test": n}
        for layer in (0, 1)
    ]
    return fastmi.RecoverabilityResult(rows, {"model": "m", "vocab_size": a.q}, {"m": held})


@pytest.mark.parametrize("fraction", [False, True])
def test_paired_intervals_cover_a_known_difference(fraction):
    q, n = 16, 300
    a, b = Channel(q, 0.2), Channel(q, 0.45)
    pop_a, pop_b = a.population(), b.population()
    truth = {bound: (pop_a[bound] - pop_b[bound]) / (a.h if fraction else 1.0) for bound in BOUNDS}
    rng = np.random.default_rng(7)
    misses = dict.fromkeys(BOUNDS, 0)
    for trial in range(DATA_SETS):
        t, za = a.draw(n, rng)
        zb = np.array([rng.choice(q, p=b.transition[s]) for s in t])
        result = paired_result(a, b, t, za, zb)
        comparison = fastmi.compare(result, "m:0", "m:1", n_bootstrap=RESAMPLES, seed=trial, fraction=fraction)
        for row in comparison.rows:
            misses[row["bound"]] += not row["lower"] <= truth[row["bound"]] <= row["upper"]
    limit = allowed_misses(DATA_SETS)
    assert all(count <= limit for count in misses.values()), (misses, limit)
