"""``probe_seeds``: N probes per layer, their seed-averaged bounds, and intervals that include the seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_probe import bag_features, random_bags

import fastmi
import fastmi.probe.recoverability as recoverability_module
from fastmi.probe.training import TrainConfig
from fastmi.results.result import RecoverabilityResult
from fastmi.stats.bounds import layer_bounds, with_seed_term

TRAIN = TrainConfig(max_epochs=6, patience=2, batch_size=32)
ESTIMATES = ("p_error", "p_error_k", "ce_bits")


@pytest.fixture(scope="module")
def data():
    bags = random_bags(300, 12, seed=2)
    layers = {0: bag_features(bags, 12, noise=0.3), 1: bag_features(bags, 12, noise=0.6, seed=1)}
    return layers, bags


def run(data, **kwargs):
    layers, bags = data
    return fastmi.recoverability(
        layers, targets=bags, vocab_size=12, train=TRAIN, n_bootstrap=300, progress=False, **kwargs
    )


def test_three_seeds_train_three_distinct_probes_per_layer(data, monkeypatch):
    weights = []
    real = recoverability_module.score_probes

    def spy(z, weight, bias, *args, **kwargs):
        weights.append(weight.clone())
        return real(z, weight, bias, *args, **kwargs)

    monkeypatch.setattr(recoverability_module, "score_probes", spy)
    result = run(data, probe_seeds=3)
    assert len(weights) == 3  # one group of two layers, three probes each
    for layer in range(2):
        for a in range(3):
            for b in range(a + 1, 3):
                assert not torch.equal(weights[a][layer], weights[b][layer])
    assert result.config["probe_seeds"] == 3
    assert [s["seed"] for s in result.config["training"]["0"]["seeds"]] == [0, 1, 2]
    for row in result.table:
        assert row["probe_seeds"] == 3 and row["variational_seed_sd"] >= 0
    assert "probe_seeds" not in run(data).table[0]  # one probe: the table as it always was


def test_three_seeds_give_intervals_at_least_as_wide_as_one(data, tmp_path):
    one, three = run(data), run(data, probe_seeds=3)
    for a, b in zip(one.table, three.table):
        for estimate in ESTIMATES:
            assert b[f"{estimate}_ucb"] - b[estimate] >= a[f"{estimate}_ucb"] - a[estimate] - 1e-12, estimate
    ref = (("embeddings", 0), ("embeddings", 1))
    narrow, wide = fastmi.compare(one, *ref), fastmi.compare(three, *ref)
    for a, b in zip(narrow.rows, wide.rows):
        assert b["difference"] - b["lower"] >= a["difference"] - a["lower"] - 1e-12
        assert b["upper"] - b["difference"] >= a["upper"] - a["difference"] - 1e-12
    # the per-seed scores travel with the result file, so a reloaded result compares the same
    three.to_json(tmp_path / "r.json")
    again = fastmi.compare(RecoverabilityResult.from_json(tmp_path / "r.json"), *ref)
    assert again.rows == wide.rows


def test_the_seed_term_adds_in_quadrature():
    point, half = np.array([0.3]), np.array([0.04])
    same = np.full((4, 1), 0.3)
    assert with_seed_term(point, half, same, 0.95) == pytest.approx(point + half)
    spread = np.array([[0.2], [0.4]])  # sd 0.1414 over two seeds
    z = 1.6448536269514722
    expected = point + np.sqrt(half**2 + (z * 0.1414213562) ** 2 / 2)
    assert with_seed_term(point, half, spread, 0.95) == pytest.approx(expected)


def test_layer_bounds_with_identical_seeds_equals_one_probe():
    rng = np.random.default_rng(0)
    errors = (rng.random(80) < 0.3).astype(float)
    ce = 1 + rng.random(80)
    single = layer_bounds(errors, errors, ce, 4.0, 50, 5, n_bootstrap=200)
    stacked = np.stack([np.stack([errors, errors, ce])] * 3)
    seeded = layer_bounds(errors, errors, ce, 4.0, 50, 5, n_bootstrap=200, seed_statistics=stacked)
    for key, value in single.items():
        assert seeded[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert seeded["probe_seeds"] == 3 and seeded["variational_seed_sd"] == 0.0
