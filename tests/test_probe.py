"""fastmi.recoverability: splits, alphabets, bad input, evaluation against a brute-force reference,
layer batching, and a tiny extract + probe end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastmi
from fastmi.data.alphabet import Alphabet
from fastmi.data.bags import BagTargets
from fastmi.data.split import Split
from fastmi.probe.evaluation import bag_counts_of, score_probes
from fastmi.probe.training import TrainConfig, fit_probes, standardize

FAST = TrainConfig(max_epochs=3, patience=2, batch_size=64)


def random_bags(n: int, vocab: int, seed: int = 0, max_tokens: int = 8, empty_rows=()) -> BagTargets:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(n):
        length = 0 if r in empty_rows else int(torch.randint(1, max_tokens + 1, (1,), generator=g))
        rows.append(torch.randint(0, vocab, (length,), generator=g).tolist())
    return BagTargets.from_token_lists(rows, vocab_size=vocab)


def bag_features(bags: BagTargets, vocab: int, noise: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Normalised bag counts plus noise: a layer from which the bag is linearly recoverable."""
    dense = torch.zeros(bags.num_rows, vocab)
    dense.index_put_((bags.row_index, bags.ids), bags.counts.float(), accumulate=True)
    dense = dense / bags.lengths.clamp(min=1).unsqueeze(1)
    g = torch.Generator().manual_seed(seed)
    return dense + noise * torch.randn(dense.shape, generator=g)


def probe(layers, bags, vocab_size, **kwargs):
    kwargs.setdefault("train", FAST)
    kwargs.setdefault("n_bootstrap", 200)
    return fastmi.recoverability(layers, targets=bags, vocab_size=vocab_size, progress=False, **kwargs)


# ---- split -------------------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_round_trips(tmp_path):
    a, b = Split.make(100, 0.2, seed=3), Split.make(100, 0.2, seed=3)
    assert a == b and a.test.size == 20 and a.validation.size == 8
    assert not np.array_equal(a.test, Split.make(100, 0.2, seed=4).test)
    union = np.concatenate([a.train, a.validation, a.test])
    assert np.array_equal(np.sort(union), np.arange(100))
    assert Split.load(a.save(tmp_path / "split.json")) == a


def test_split_refuses_other_corpus_and_empty_parts():
    split = Split.make(50, 0.2, corpus_fingerprint="abc")
    with pytest.raises(ValueError, match="made for 50 sentences"):
        split.check(49)
    with pytest.raises(ValueError, match="corpus"):
        split.check(50, "xyz")
    with pytest.raises(ValueError, match="no held-out sentences"):
        Split.make(10, 0.01)
    with pytest.raises(ValueError, match="strictly between"):
        Split.make(10, 1.0)


def test_given_split_fixes_the_held_out_rows():
    vocab, n = 12, 120
    bags = random_bags(n, vocab)
    split = Split.make(n, 0.25, seed=7)
    result = probe({0: bag_features(bags, vocab)}, bags, vocab, split=split, seed=1)
    assert result.config["split"] == split.to_dict()
    assert result.table[0]["n_test"] == split.test.size


# ---- alphabet ----------------------------------------------------------------------------------------
def test_observed_and_full_alphabets():
    bags = BagTargets.from_token_lists([[5, 7, 7], [9, 5], [30]], vocab_size=40)
    observed = Alphabet.build("observed", bags, 40, excluded_ids=[0, 1])
    full = Alphabet.build("full", bags, 40, excluded_ids=[0, 1])
    # the training ids plus "other" for every other id of the vocabulary
    assert observed.size == 5 and observed.other and full.size == 38
    compact = observed.compact(bags)
    assert compact.ids.tolist() == [0, 1, 0, 2, 3] and compact.counts.tolist() == [1, 2, 1, 1, 1]
    assert full.compact(bags).ids.tolist() == [3, 5, 3, 7, 28]


def test_result_rows_state_alphabet_and_size():
    vocab = 30
    bags = random_bags(80, 10, seed=1)  # ids < 10 only
    z = {0: bag_features(bags, 10)}
    observed = probe(z, bags, vocab, vocab="observed").table[0]
    full = probe(z, bags, vocab, vocab="full", excluded_ids=[28, 29]).table[0]
    # every id < 10 occurs in a training bag; "other" stands for ids 10..29
    assert (observed["vocab"], observed["M"]) == ("observed", len(set(bags.ids.tolist())) + 1)
    assert (full["vocab"], full["M"]) == ("full", 28)


# ---- bad input ---------------------------------------------------------------------------------------
def test_bad_inputs_get_clear_errors():
    vocab = 10
    bags = random_bags(40, vocab)
    z = bag_features(bags, vocab)
    with pytest.raises(ValueError, match="out of range"):
        probe({0: z}, bags, vocab_size=5, vocab="full")
    with pytest.raises(ValueError, match="layer 2 has"):
        probe({0: z, 2: z[:-1]}, bags, vocab)
    bad = z.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="layer 4 has NaN or infinite embeddings.*row 3"):
        probe({0: z, 4: bad}, bags, vocab)
    with pytest.raises(ValueError, match="no held-out sentences"):
        probe({0: z}, bags, vocab, test_fraction=0.001)
    with pytest.raises(ValueError, match="need targets"):
        fastmi.recoverability({0: z}, vocab_size=vocab)
    with pytest.raises(ValueError, match="vocab must be"):
        probe({0: z}, bags, vocab, vocab="everything")


def test_empty_bags_are_skipped_and_counted():
    vocab, n = 8, 60
    empty = {0, 5, 17, 33, 48}
    bags = random_bags(n, vocab, empty_rows=empty)
    split = Split.make(n, 0.2, seed=0)
    row = probe({0: bag_features(bags, vocab)}, bags, vocab, split=split).table[0]
    assert row["n_skipped"] == len(empty)
    held_out = set(split.test.tolist())
    assert row["n_test"] == len(held_out - empty)
    assert row["n_train"] == len(set(split.train.tolist()) - empty)


# ---- evaluation against brute force ---------------------------------------------------------------
def test_bag_counts_of_matches_a_dense_lookup():
    bags = random_bags(30, 15, seed=2)
    predicted = torch.randint(0, 15, (2, 30, 4))
    dense = torch.zeros(30, 15, dtype=torch.long)
    dense.index_put_((bags.row_index, bags.ids), bags.counts, accumulate=True)
    expected = torch.gather(dense.expand(2, -1, -1), 2, predicted)
    assert torch.equal(bag_counts_of(predicted, bags, 15), expected)


def test_score_probes_matches_materialised_logits():
    L, n, d, M, k = 2, 37, 6, 11, 3
    bags = random_bags(n, M, seed=3)
    z, weight, bias = torch.randn(L, n, d), torch.randn(L, M, d), torch.randn(L, M)
    scores = score_probes(z, weight, bias, bags, M, k, chunk=16)
    logits = z @ weight.transpose(1, 2) + bias.unsqueeze(1)
    dense = torch.zeros(n, M, dtype=torch.float64)
    dense.index_put_((bags.row_index, bags.ids), bags.counts.double(), accumulate=True)
    share = dense / dense.sum(1, keepdim=True)
    order = logits.argsort(dim=-1, descending=True, stable=True)
    for layer in range(L):
        top = order[layer]
        assert torch.allclose(scores.errors[layer], 1 - share.gather(1, top[:, :1]).squeeze(1))
        assert torch.allclose(scores.errors_k[layer], 1 - share.gather(1, top[:, :k]).sum(1))
        ce = -(share * torch.log_softmax(logits[layer].double(), -1)).sum(1) / math.log(2)
        assert torch.allclose(scores.ce_bits[layer], ce, atol=1e-4)
        sizes = bags.bag_sizes
        recall = torch.tensor([float((dense[b, top[b, : sizes[b]]] > 0).sum()) / sizes[b] for b in range(n)])
        assert torch.allclose(scores.bag_recall[layer].float(), recall)


# ---- training ----------------------------------------------------------------------------------------
def test_layers_trained_together_equal_layers_trained_alone():
    vocab, n = 9, 90
    bags = random_bags(n, vocab, seed=4)
    z = torch.stack([bag_features(bags, vocab, seed=s) for s in range(3)])
    z = standardize(z, torch.arange(n))
    train, val = torch.arange(70), torch.arange(70, n)
    config = TrainConfig(max_epochs=4, patience=4, batch_size=32)
    together = fit_probes(z[:, train], bags.select(train), z[:, val], bags.select(val), vocab, config, progress=False)
    for layer in range(3):
        alone = fit_probes(
            z[layer : layer + 1, train],
            bags.select(train),
            z[layer : layer + 1, val],
            bags.select(val),
            vocab,
            config,
            progress=False,
        )
        assert torch.allclose(together.weight[layer], alone.weight[0], atol=1e-5)
        assert together.best_epoch[layer] == alone.best_epoch[0]


def test_training_beats_the_prior_and_never_ends_worse_on_validation():
    vocab, n = 10, 300
    bags = random_bags(n, vocab, seed=5)
    z = standardize(torch.stack([bag_features(bags, vocab, noise=0.1), torch.randn(n, vocab)]), torch.arange(n))
    train, val = torch.arange(240), torch.arange(240, n)
    fitted = fit_probes(
        z[:, train],
        bags.select(train),
        z[:, val],
        bags.select(val),
        vocab,
        TrainConfig(max_epochs=15, batch_size=64),
        progress=False,
    )
    # epoch 0 is the prior-only probe: the informative layer must improve on it, the noise layer
    # may not, but keeps its best (possibly epoch-0) weights.
    assert fitted.best_epoch[0] > 0
    assert fitted.validation_ce_nats[0] < fitted.validation_ce_nats[1] - 0.3


def test_memory_budget_groups_layers_without_changing_results():
    vocab, n = 8, 80
    bags = random_bags(n, vocab, seed=6)
    layers = {l: bag_features(bags, vocab, seed=l) for l in range(3)}
    one_group = probe(layers, bags, vocab)
    grouped = probe(layers, bags, vocab, max_memory=1)
    assert one_group.config["layer_groups"] == [[0, 1, 2]]
    assert grouped.config["layer_groups"] == [[0], [1], [2]]
    for a, b in zip(one_group.table, grouped.table):
        assert a["ce_bits"] == pytest.approx(b["ce_bits"], abs=1e-4)


# ---- end to end with a tiny model ------------------------------------------------------------------
def test_tiny_model_extract_then_probe(tmp_path):
    from tiny import make_tiny_model, random_sentences

    model_dir = make_tiny_model("gpt2", tmp_path / "gpt2", hidden=16, layers=2)
    corpus = fastmi.Corpus.from_sentences(random_sentences(80, seed=1))
    cache = fastmi.extract(str(model_dir), corpus, cache_dir=tmp_path / "cache", progress=False, batch_size=16)
    result = fastmi.recoverability(cache, train=FAST, n_bootstrap=200, progress=False)
    rows = result.table
    assert [r["layer"] for r in rows] == cache.layers == [0, 1, 2]
    assert [r["rel_depth"] for r in rows] == [0.0, 0.5, 1.0]
    assert all(r["n_test"] == 16 and r["pooling"] == "mean" for r in rows)
    assert result.config["split"]["corpus_fingerprint"] == corpus.fingerprint
    for r in rows:
        assert 0 <= r["variational_lcb"] <= r["H_T"] and 0 <= r["p_error"] <= 1


def test_top_k_alphabet_merges_rare_ids_into_other():
    from fastmi.data.alphabet import Alphabet

    # id 7 carries the most mass, then 3, then 9 and 4 (rare); K=3 keeps 7 and 3, merges the rest.
    bags = BagTargets.from_token_lists([[7, 7, 3, 9], [7, 3, 4], [7, 7, 7], [3, 9, 4, 4]])
    alphabet = Alphabet.build("top:3", bags, vocab_size=12)
    assert alphabet.size == 3 and alphabet.other
    assert alphabet.vocab_ids.tolist() == [3, 7]
    compact = alphabet.compact(bags)
    rows = [dict(zip(compact.select([r]).ids.tolist(), compact.select([r]).counts.tolist())) for r in range(4)]
    assert rows == [{0: 1, 1: 2, 2: 1}, {0: 1, 1: 1, 2: 1}, {1: 3}, {0: 1, 2: 3}]
    assert torch.equal(compact.lengths, bags.lengths)  # merging never loses a token
    # A K that covers every observed id merges none of them; "other" stands for the unseen ids.
    wide = Alphabet.build("top:10", bags, vocab_size=12)
    assert wide.vocab_ids.tolist() == [3, 4, 7, 9] and wide.other and wide.size == 5
    # ... and is not needed when the vocabulary holds no other id.
    assert not Alphabet.build("top:10", bags, vocab_size=12, excluded_ids=[0, 1, 2, 5, 6, 8, 10, 11]).other


@pytest.mark.parametrize("setting", ["top:1", "top:x", "top", "frequent"])
def test_bad_vocab_setting_is_refused(setting):
    from fastmi.data.alphabet import Alphabet

    with pytest.raises(ValueError, match="vocab must be"):
        Alphabet.build(setting, BagTargets.from_token_lists([[1, 2]]), vocab_size=4)
