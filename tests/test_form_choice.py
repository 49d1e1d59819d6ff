"""probe="auto" (fastmi.probe.form_choice): the embedding and the unembedding probe both fitted, the
better on validation kept per layer.  Each layer must be exactly the probe of the form it names,
the choice must follow the validation cross-entropy, and a fit with the forms given (the extra
probe seeds, the curve's points) must be each form's own fit of its layers."""

from __future__ import annotations

import functools

import pytest
import torch
from test_embedding_probe import FAST, embedded_bags

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.probe.checks import AUTO_FORMS
from fastmi.probe.form_choice import fit_forms, standardising
from fastmi.probe.heads import TrainedHeads, fit_heads
from fastmi.probe.training import mean_ce


def two_layers(seed: int = 3):
    """Layer 0: the mean of the bag's embedding rows (the rows are the tokens' own directions);
    layer 1: the same seen through a random linear map and more noise, which the unembedding probe's
    d x d map can undo from few sentences and the embedding probe's start cannot."""
    vocab, dim = 400, 32
    z, bags, embedding = embedded_bags(600, vocab, dim, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    mixed = z @ torch.randn(dim, dim, generator=g) / dim**0.5 + 0.3 * torch.randn(z.shape, generator=g)
    return {0: z, 1: mixed}, bags, embedding, vocab


def test_auto_is_at_each_layer_exactly_the_form_it_names():
    layers, bags, embedding, vocab = two_layers()
    common = dict(targets=bags, vocab_size=vocab, unembedding=embedding, n_bootstrap=200, train=FAST, progress=False)
    auto = fastmi.recoverability(layers, probe="auto", **common)
    alone = {form: fastmi.recoverability(layers, probe=form, **common) for form in AUTO_FORMS}
    for row in auto.table:
        log = auto.config["training"][str(row["layer"])]
        assert row["probe"] == log["form"] in AUTO_FORMS
        ce = log["form_validation_ce_bits"]
        assert ce[row["probe"]] <= min(ce.values())  # kept: the lower validation cross-entropy
        same = next(r for r in alone[row["probe"]].table if r["layer"] == row["layer"])
        for key in ("variational_bits", "variational_lcb", "fano_bits", "list_fano_bits"):
            assert row[key] == pytest.approx(same[key], abs=1e-6), key
    assert {row["probe"] for row in auto.table} == set(AUTO_FORMS)  # the two layers chose differently
    assert auto.config["probe"] == auto.config["probe_trained"] == "auto"


def test_each_curve_point_is_the_form_it_names_chosen_at_its_own_size():
    layers, bags, embedding, vocab = two_layers()
    common = dict(targets=bags, vocab_size=vocab, unembedding=embedding, n_bootstrap=200, train=FAST, progress=False)
    common["curve"] = (0.25, 1.0)
    auto = fastmi.recoverability(layers, probe="auto", **common)
    alone = {form: fastmi.recoverability(layers, probe=form, **common) for form in AUTO_FORMS}
    assert len(auto.curves) == 4
    for point in auto.curves:
        assert point["probe"] in AUTO_FORMS
        same = next(
            p
            for p in alone[point["probe"]].curves
            if (p["layer"], p["fraction"]) == (point["layer"], point["fraction"])
        )
        assert same["probe"] == point["probe"]
        # The embedding probe is standardised with the statistics of the rows it trains on: under
        # "auto" a curve point's own subset, alone the whole training part's (a few thousandths of a bit).
        tolerance = 1e-6 if point["probe"] == "unembedding" or point["fraction"] == 1.0 else 0.01
        assert point["variational_bits"] == pytest.approx(same["variational_bits"], abs=tolerance)


def _fits(embedding: torch.Tensor):
    unembedding = functools.partial(fit_heads, probe="unembedding", unembedding=(embedding, None))
    rows = [("embedding", embedding.float())]
    return {
        "embedding": standardising(functools.partial(fit_heads, probe="embedding", unembedding=(rows, None))),
        "unembedding": unembedding,
    }


def test_forms_given_are_each_forms_own_fit_of_its_layers():
    """The path of the extra seeds and the curve points: a layer given a form gets what that form's
    fit of that layer alone gives, whatever the other layers' forms."""
    layers, bags, embedding, vocab = two_layers(seed=5)
    z = torch.stack([layers[0], layers[1]])
    train, val = torch.arange(0, 450), torch.arange(450, 600)
    data = (z[:, train], bags.select(train), z[:, val], bags.select(val), vocab, FAST)
    fits = _fits(embedding)
    mixed = fit_forms(fits, *data, forms=["unembedding", "embedding"], seed=2, progress=False)
    assert mixed.form == ["unembedding", "embedding"] and not mixed.form_ce_nats
    for layer, form in enumerate(mixed.form):
        one = (
            z[layer : layer + 1, train],
            bags.select(train),
            z[layer : layer + 1, val],
            bags.select(val),
            vocab,
            FAST,
        )
        own = fits[form](*one, seed=2, progress=False)
        torch.testing.assert_close(mixed.weight[layer], own.weight[0])
        torch.testing.assert_close(mixed.bias[layer], own.bias[0])
        torch.testing.assert_close(mixed.features(z)[layer], own.features(z[layer : layer + 1])[0])
        assert mixed.start[layer] == own.start[0] and mixed.best_epoch[layer] == own.best_epoch[0]


def _stub(weight: torch.Tensor, bias: torch.Tensor, scale: float, name: str) -> TrainedHeads:
    layers = weight.shape[0]
    return TrainedHeads(
        weight, bias, lambda z: scale * z, [1] * layers, [0.0] * layers, 3, [name] * layers, [True] * layers
    )


def test_the_choice_follows_validation_per_layer_and_merges_every_field():
    """Two stub fits whose validation cross-entropies cross between layers: each layer keeps the lower
    one, with that fit's weight, bias, features and log, and both cross-entropies are recorded."""
    g = torch.Generator().manual_seed(0)
    num_layers, m, d, n = 3, 7, 5, 40
    z_val = torch.randn(num_layers, n, d, generator=g)
    targets = BagTargets.from_token_lists([[int(i % m)] for i in range(n)], vocab_size=m)
    weights = {form: torch.randn(num_layers, m, d, generator=g) for form in AUTO_FORMS}
    weights["embedding"][1] *= 50  # large random logits: a far worse cross-entropy at that layer
    weights["unembedding"][[0, 2]] *= 50
    biases = {form: torch.randn(num_layers, m, generator=g) for form in AUTO_FORMS}
    scales = {"embedding": 1.0, "unembedding": 2.0}
    stubs = {
        form: (lambda *a, form=form, **k: _stub(weights[form].clone(), biases[form].clone(), scales[form], form))
        for form in AUTO_FORMS
    }
    merged = fit_forms(stubs, z_val, targets, z_val, targets, m, FAST)
    ce = {form: mean_ce(scales[form] * z_val, weights[form], biases[form], targets, 8) for form in AUTO_FORMS}
    expected = ["unembedding" if ce["unembedding"][i] < ce["embedding"][i] else "embedding" for i in range(num_layers)]
    assert expected == ["embedding", "unembedding", "embedding"]
    assert merged.form == expected == merged.start
    features = merged.features(z_val)
    for layer, form in enumerate(expected):
        torch.testing.assert_close(merged.weight[layer], weights[form][layer])
        torch.testing.assert_close(merged.bias[layer], biases[form][layer])
        torch.testing.assert_close(features[layer], scales[form] * z_val[layer])
        assert merged.form_ce_nats[layer] == {f: pytest.approx(float(ce[f][layer])) for f in AUTO_FORMS}


def test_forms_that_are_not_one_per_layer_are_refused():
    layers, bags, embedding, vocab = two_layers()
    z = torch.stack([layers[0], layers[1]])
    with pytest.raises(ValueError, match="one of"):
        fit_forms(_fits(embedding), z, bags, z, bags, vocab, FAST, forms=["embedding"])
