"""A probe stopped by the epoch cap while still improving is recorded per layer and announced."""

from __future__ import annotations

from test_probe import bag_features, random_bags

import fastmi
from fastmi.probe.training import TrainConfig
from fastmi.results.result import RecoverabilityResult

VOCAB = 24


def layers_and_bags():
    bags = random_bags(300, VOCAB, seed=3)
    return {0: bag_features(bags, VOCAB, noise=0.3, seed=1), 1: bag_features(bags, VOCAB, noise=1.0, seed=2)}, bags


def run(train: TrainConfig):
    layers, bags = layers_and_bags()
    return fastmi.recoverability(layers, targets=bags, vocab_size=VOCAB, train=train, n_bootstrap=100, progress=False)


def test_the_epoch_cap_leaves_layers_unconverged_and_says_so_once(capsys, tmp_path):
    result = run(TrainConfig(max_epochs=1, patience=3, batch_size=64))
    assert [r["converged"] for r in result.table] == [False, False]  # one epoch cannot exhaust a patience of 3
    said = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("fastmi: embeddings: the probe of layer(s) 0-1 (2 of 2)")
    assert "max_epochs=1" in said[0] and "--max-epochs 2" in said[0]
    table = result.format_table(["layer", "converged"]).splitlines()
    assert [line.split()[-1] for line in table[2:]] == ["no", "no"]
    # the column survives CSV and JSON as a bool
    again = RecoverabilityResult.from_csv(result.to_csv(tmp_path / "r.csv"))
    assert [r["converged"] for r in again.table] == [False, False]
    assert [r["converged"] for r in RecoverabilityResult.from_json(result.to_json(tmp_path / "r.json")).table] == [
        False,
        False,
    ]


def test_patience_that_runs_out_marks_every_layer_converged(capsys):
    result = run(TrainConfig(max_epochs=300, patience=2, batch_size=64))
    assert [r["converged"] for r in result.table] == [True, True]
    assert result.config["training"]["0"]["epochs_run"] < 300  # stopped by patience, not by the cap
    assert "still improving" not in capsys.readouterr().err
