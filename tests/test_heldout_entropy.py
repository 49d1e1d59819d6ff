"""H(f(T)) on the held-out sentences, resampled with the error terms (docs/theory.md §5-6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_probe import bag_features, random_bags

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.probe.training import TrainConfig
from fastmi.stats.bootstrap import resample_counts
from fastmi.stats.bounds import entropy_bits, layer_bounds
from fastmi.stats.heldout_entropy import Frequencies, HeldOutEntropy

TRAIN = TrainConfig(max_epochs=4, patience=2, batch_size=32)


def entropy_of(bags: BagTargets, n_bootstrap=300, seed=0, method="plugin") -> HeldOutEntropy:
    freq = Frequencies.of(bags)
    return HeldOutEntropy.estimate(freq, resample_counts(freq.n, n_bootstrap, seed, "draws"), method)


def test_each_resample_is_the_plugin_entropy_of_its_sentences():
    bags = random_bags(40, 9, seed=3)
    est = entropy_of(bags, n_bootstrap=100, seed=5)
    dense = torch.zeros(40, 9, dtype=torch.float64)
    dense.index_put_((bags.row_index, bags.ids), bags.counts.double(), accumulate=True)
    freq = (dense / bags.lengths.double().unsqueeze(1)).numpy()
    assert est.point == pytest.approx(entropy_bits(freq.sum(0)))
    counts = np.concatenate(list(resample_counts(40, 100, 5, "draws")))
    for r in (0, 17, 99):
        assert est.draws[r] == pytest.approx(entropy_bits(counts[r] @ freq))
    # plug-in is biased low, and a resample holds fewer distinct sentences: the draws sit lower still
    assert np.mean(est.draws) < est.point


def test_with_a_constant_entropy_the_lcbs_are_those_of_a_known_h():
    rng = np.random.default_rng(1)
    errors = (rng.random(120) < 0.3).astype(float)
    errors_k = errors * (rng.random(120) < 0.5)
    ce = 1 + 2 * rng.random(120) ** 2
    fixed = layer_bounds(errors, errors_k, ce, 5.0, 40, 3, n_bootstrap=400, seed=2)
    known = HeldOutEntropy(5.0, np.full(400, 5.0), np.zeros(120), "plugin")
    joint = layer_bounds(errors, errors_k, ce, 0.0, 40, 3, n_bootstrap=400, seed=2, entropy=known)
    for column in ("fano_lcb", "list_fano_lcb", "variational_lcb", "variational_bits", "H_T"):
        assert joint[column] == pytest.approx(fixed[column], abs=0.01), column


def test_the_entropy_error_widens_a_bound_whose_error_term_is_exact():
    rng = np.random.default_rng(2)
    ce = np.full(200, 1.5)  # a decoder with the same cross-entropy on every sentence
    known = HeldOutEntropy(4.0, np.full(300, 4.0), np.zeros(200), "plugin")
    spread = HeldOutEntropy(4.0, 4.0 + 0.2 * rng.standard_normal(300), rng.standard_normal(200), "plugin")
    zeros = np.zeros(200)
    tight = layer_bounds(zeros, zeros, ce, 0.0, 50, 3, n_bootstrap=300, entropy=known)
    loose = layer_bounds(zeros, zeros, ce, 0.0, 50, 3, n_bootstrap=300, entropy=spread)
    assert tight["variational_lcb"] == pytest.approx(2.5)
    assert loose["variational_lcb"] < 2.5 - 0.2  # about the 97.5% quantile of H's spread (Bonferroni)


def test_results_name_the_estimator_and_use_the_held_out_entropy(tmp_path):
    bags = random_bags(200, 10, seed=4)
    layers = {0: bag_features(bags, 10, noise=0.4), 1: bag_features(bags, 10, noise=0.8, seed=1)}
    kwargs = dict(targets=bags, vocab_size=10, train=TRAIN, n_bootstrap=300, progress=False)
    result = fastmi.recoverability(layers, **kwargs)
    assert "held-out" in result.config["entropy_estimator"] and "plugin" in result.config["entropy_estimator"]
    test_rows = np.array(result.config["split"]["test"])
    held = bags.select(test_rows[np.argsort(test_rows)])
    assert result.table[0]["H_T"] == pytest.approx(entropy_of(held).point)
    # The held-out bags travel with the result: a comparison resamples H too.  Between two layers of
    # one model, H cancels in a difference of bits, and does not in a difference of fractions.
    result.to_json(tmp_path / "r.json")
    back = fastmi.RecoverabilityResult.from_json(tmp_path / "r.json")
    assert back.held_out["embeddings"].frequencies is not None
    bits = fastmi.compare(back, ("embeddings", 0), ("embeddings", 1), fraction=False)
    fractions = fastmi.compare(back, ("embeddings", 0), ("embeddings", 1), fraction=True)
    back.held_out["embeddings"].frequencies = None  # as a result made before they were kept
    bits_fixed = fastmi.compare(back, ("embeddings", 0), ("embeddings", 1), fraction=False)
    fractions_fixed = fastmi.compare(back, ("embeddings", 0), ("embeddings", 1), fraction=True)
    for a, b in zip(bits.rows, bits_fixed.rows):
        assert (a["lower"], a["upper"]) == pytest.approx((b["lower"], b["upper"]), abs=1e-9)
    assert any(
        (a["lower"], a["upper"]) != pytest.approx((b["lower"], b["upper"]), abs=1e-9)
        for a, b in zip(fractions.rows, fractions_fixed.rows)
    )
