"""E1 of the third claim's test (fastmi/finetune/objective_bound.py): the term's own pooling, and a
fresh full-vocabulary probe scored on the held-out part alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastmi.data.corpus import Corpus
from fastmi.finetune.loss import pool_states
from fastmi.finetune.objective_bound import objective_bound, term_pooled_states
from fastmi.finetune.run import load_trainable
from fastmi.finetune.split import claim_split, evaluation_split
from fastmi.probe.config import TrainConfig
from tests.tiny import make_tiny_model, random_sentences


def _reference_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain torch: each token layer-normalised (no affine), then the mean over unmasked tokens."""
    normed = F.layer_norm(hidden.double(), hidden.shape[-1:])
    m = mask.double().unsqueeze(-1)
    return (normed * m).sum(1) / m.sum(1)


def _held_out_entropy(bags) -> float:
    """Plug-in H(T) in bits of T, a token drawn from a held-out sentence: p(t) = mean_S c_S(t) / n_S."""
    p = np.zeros(int(bags.ids.max()) + 1)
    for row in range(bags.num_rows):
        one = bags.select([row])
        np.add.at(p, one.ids.numpy(), one.counts.double().numpy() / one.counts.sum().item())
    p = p[p > 0] / bags.num_rows
    return float(-(p * np.log2(p)).sum())


def test_pool_states_is_per_token_layer_norm_then_masked_mean():
    torch.manual_seed(3)
    hidden = torch.randn(5, 9, 12) * 4 + torch.randn(12)  # an offset per coordinate, as residual streams have
    hidden[0, 0, 3] = 900.0  # a massive activation on one token: the per-token norm tames it there
    mask = (torch.rand(5, 9) > 0.3).long()
    mask[:, 0] = 1
    pooled = pool_states(hidden, mask, "mean", normalize=True)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled.double(), _reference_pool(hidden, mask), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    path = make_tiny_model("bert", tmp_path_factory.mktemp("bert") / "bert", hidden=16, layers=2)
    model, tokenizer, kind, _ = load_trainable(str(path), seed=0)
    return model, tokenizer


def test_term_pooled_states_equal_each_sentence_run_alone(bert):
    model, tokenizer = bert
    sentences = random_sentences(7, seed=4, min_words=2, max_words=12)
    tokens = Corpus.from_sentences(sentences).tokenize(tokenizer, 10)  # some cut at 10, as training cuts
    features = term_pooled_states(model, tokenizer, tokens, layers=[1, 2], batch_size=3)  # padded batches
    assert sorted(features.states) == [1, 2] and features.states[2].shape == (7, 16)
    model.eval()
    for i, ids in enumerate(tokens):
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in (1, 2):
            expected = _reference_pool(hidden[layer], torch.ones(1, len(ids)))[0]
            torch.testing.assert_close(features.states[layer][i].double(), expected, rtol=1e-4, atol=1e-5)
    special = set(tokenizer.all_special_ids)
    assert features.excluded_ids == sorted(special) and features.vocab_size == len(tokenizer)
    first = features.bags.select([0])
    assert set(first.ids.tolist()) == {t for t in tokens[0] if t not in special}


def _split_features(bert, layers):
    """150 random sentences split three ways: (parts, the probe/held-out split, its rows in the
    corpus, the term's pooled states at ``layers``)."""
    model, tokenizer = bert
    sentences = random_sentences(150, seed=9, min_words=3)
    parts = claim_split(len(sentences), seed=1, tune_fraction=0.3, probe_fraction=0.4)
    corpus, split, rows = evaluation_split(sentences, parts)
    features = term_pooled_states(model, tokenizer, corpus.tokenize(tokenizer, 24), layers=layers)
    return parts, split, rows, features


def test_objective_bound_scores_the_held_out_part_only(bert, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    parts, split, rows, features = _split_features(bert, [1, 2])
    quick = TrainConfig(max_epochs=3, batch_size=32)
    result = objective_bound(features, split, checkpoint_dir=tmp_path / "probes", train=quick)
    assert sorted(result) == [1, 2]
    for entry in result.values():
        assert np.array_equal(entry["rows"], split.test)  # every held-out sentence has a bag here
        assert set(rows[entry["rows"]].tolist()) == set(parts.heldout.tolist())  # the held-out part, nothing else
        assert entry["values"].shape == (split.test.size,) and np.all(np.isfinite(entry["values"]))
        assert entry["values"].mean() == pytest.approx(entry["bound_bits"])
        assert entry["H_T"] == pytest.approx(_held_out_entropy(features.bags.select(split.test)), rel=1e-9)
        assert np.ptp(entry["values"]) > 0
    assert not np.allclose(result[1]["values"], result[2]["values"])


def test_objective_bound_ties_unseen_ids_by_default_and_bounds_as_the_untied_probe(bert, tmp_path, monkeypatch):
    # Tying the ids no training bag holds is exact (the same problem as the untied full softmax) and
    # makes E1 affordable over a 30k vocabulary; the two must agree up to where early stopping ends.
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    _, split, _, features = _split_features(bert, [1])
    quick = {"max_epochs": 8, "batch_size": 32}
    tied = objective_bound(features, split, checkpoint_dir=tmp_path / "a", train=TrainConfig(**quick))
    untied = objective_bound(
        features, split, checkpoint_dir=tmp_path / "b", train=TrainConfig(tie_unseen=False, **quick)
    )
    stored = {p.parent.name for p in (tmp_path / "a").rglob("*.json")} ^ {
        p.parent.name for p in (tmp_path / "b").rglob("*.json")
    }
    assert stored  # different settings, different stores: the default is not the untied probe
    assert tied[1]["bound_bits"] == pytest.approx(untied[1]["bound_bits"], abs=0.05)
    assert not np.array_equal(tied[1]["values"], untied[1]["values"])
