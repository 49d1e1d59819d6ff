"""The embedding probe (fastmi.probe.embedding_start): the linear probe started from the model's own
embedding rows and pulled toward them.  It must stay a valid bound whatever the rows are, learn more
than the zero start from few sentences when the rows carry the tokens' directions, and make every
choice (start scale, early stopping, "other") without reading a held-out sentence."""

from __future__ import annotations

import math

import pytest
import torch
from test_channels_end_to_end import binary_entropy, single_token_bags

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.models.unembedding import MissingUnembeddingError
from fastmi.probe.adamw import AdamW
from fastmi.probe.checks import AUTO_FORMS
from fastmi.probe.config import ProbeConfig
from fastmi.probe.training import TrainConfig

BOUNDS = ("fano", "list_fano", "variational")
FAST = TrainConfig(max_epochs=8, patience=2, batch_size=256)


def symmetric_channel(q: int, eps: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One token per sentence through a q-ary symmetric channel, z its one-hot output; and I(T; z)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(q, (n,), generator=g)
    flip = torch.rand(n, generator=g) < eps
    noisy = torch.where(flip, (t + torch.randint(1, q, (n,), generator=g)) % q, t)
    true_mi = math.log2(q) - binary_entropy(eps) - eps * math.log2(q - 1)
    return torch.nn.functional.one_hot(noisy, q).float(), t, true_mi


@pytest.mark.parametrize("probe", ["embedding", "auto"])
@pytest.mark.parametrize("rows", ["identity", "random"])
def test_no_lcb_of_the_embedding_probe_is_above_the_true_mi(rows, probe):
    """A start from the right rows (identity: the channel's own map) or from rows unrelated to it
    only changes which decoder is scored: the bounds stay below I(T; z)."""
    q, eps = 8, 0.2
    z, t, true_mi = symmetric_channel(q, eps, 6000, seed=q)
    u = torch.eye(q) if rows == "identity" else torch.randn(q, q, generator=torch.Generator().manual_seed(5))
    result = fastmi.recoverability(
        {0: z},
        targets=single_token_bags(t),
        vocab_size=q,
        k=2,
        probe=probe,
        unembedding=u,
        n_bootstrap=300,
        train=FAST,
        progress=False,
    )
    row = result.table[0]
    assert row["probe"] == "embedding" if probe == "embedding" else row["probe"] in AUTO_FORMS
    for bound in BOUNDS:
        assert row[f"{bound}_lcb"] <= true_mi, bound
    assert abs(row["variational_bits"] - true_mi) < 0.15  # the Bayes decoder is linear here: tight


def test_embedding_probe_finds_nothing_in_an_independent_layer():
    q, n = 8, 6000
    g = torch.Generator().manual_seed(1)
    t = torch.randint(q, (n,), generator=g)
    z = torch.randn(n, 16, generator=g)
    result = fastmi.recoverability(
        {0: z},
        targets=single_token_bags(t),
        vocab_size=q,
        probe="embedding",
        unembedding=torch.randn(q, 16, generator=g),
        n_bootstrap=300,
        train=FAST,
        progress=False,
    )
    assert all(result.table[0][f"{bound}_lcb"] == 0.0 for bound in BOUNDS)


def embedded_bags(n: int, vocab: int, dim: int, seed: int) -> tuple[torch.Tensor, BagTargets, torch.Tensor]:
    """Zipf bags of ~8 tokens and z = the mean of their embedding rows E [vocab, dim] plus noise: a
    mean-pooled embedding layer, where most ids occur in a handful of training bags."""
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, vocab + 1).double()
    rows = [torch.multinomial(p, 8, replacement=True, generator=g).tolist() for _ in range(n)]
    bags = BagTargets.from_token_lists(rows, vocab_size=vocab)
    embedding = torch.randn(vocab, dim, generator=g)
    dense = torch.zeros(n, vocab)
    dense.index_put_((bags.row_index, bags.ids), bags.counts.float(), accumulate=True)
    z = (dense / bags.lengths.unsqueeze(1)) @ embedding + 0.05 * torch.randn(n, dim, generator=g)
    return z, bags, embedding


def test_embedding_start_learns_more_from_few_sentences_than_the_zero_start():
    vocab, dim = 600, 48
    z, bags, embedding = embedded_bags(500, vocab, dim, seed=3)
    common = dict(targets=bags, vocab_size=vocab, n_bootstrap=200, train=FAST, progress=False)
    linear = fastmi.recoverability({0: z}, probe="linear", **common)
    embedded = fastmi.recoverability({0: z}, probe="embedding", unembedding=embedding, **common)
    assert embedded.config["training"]["0"]["start"].startswith("embedding x")
    assert embedded.table[0]["variational_bits"] > linear.table[0]["variational_bits"] + 0.5


def test_rows_unrelated_to_the_layer_start_at_zero():
    """Unrelated rows only add noise to the logits: the validation sentences choose scale 0, the
    linear probe's own start."""
    z, t, _ = symmetric_channel(16, 0.3, 4000, seed=2)
    u = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    result = fastmi.recoverability(
        {0: z},
        targets=single_token_bags(t),
        vocab_size=16,
        probe="embedding",
        unembedding=u,
        n_bootstrap=100,
        train=FAST,
        progress=False,
    )
    assert result.config["training"]["0"]["start"] == "prior"


@pytest.mark.parametrize("probe", ["embedding", "auto"])
def test_choices_never_read_the_held_out_sentences(probe):
    """Poison the held-out rows' features: every choice made before scoring (the start's scale, the
    best epoch, the validation cross-entropy, the calibration of "other", and for "auto" the form
    kept at each layer) is the same."""
    vocab, dim, n = 300, 32, 600
    z, bags, embedding = embedded_bags(n, vocab, dim, seed=4)
    held_out = torch.as_tensor(ProbeConfig().make_split(n).test)
    poisoned = z.clone()
    poisoned[held_out] = 1e3 * torch.randn(held_out.numel(), dim, generator=torch.Generator().manual_seed(9))
    logs = []
    for features in (z, poisoned):
        result = fastmi.recoverability(
            {0: features, 1: 2 * features},
            targets=bags,
            vocab_size=vocab,
            probe=probe,
            unembedding=embedding,
            n_bootstrap=100,
            train=FAST,
            progress=False,
        )
        logs.append(result.config["training"])
    if probe == "auto":
        assert all(log["form"] in AUTO_FORMS for log in logs[0].values())
    assert logs[0] == logs[1]


def test_decay_toward_an_anchor_is_adamw_on_the_offset_from_it():
    """W pulled toward W0 is torch's AdamW on W - W0 (decay toward 0), step for step."""
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(2, 9, 4, generator=g)
    offset = torch.randn(2, 9, 4, generator=g)
    ours = (anchor + offset).requires_grad_(True)
    theirs = offset.clone().requires_grad_(True)
    optimizer = AdamW([ours], lr=0.1, weight_decay=[0.3], anchors=[anchor])
    reference = torch.optim.AdamW([theirs], lr=0.1, weight_decay=0.3, foreach=False, fused=False)
    for _ in range(6):
        grad = torch.randn(2, 9, 4, generator=g)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
    torch.testing.assert_close(ours.detach(), anchor + theirs.detach(), rtol=0, atol=1e-6)


def test_embedding_probe_settings_are_refused_with_reasons():
    with pytest.raises(ValueError, match="full softmax only"):
        ProbeConfig(probe="embedding", train_softmax="sampled:16")
    with pytest.raises(ValueError, match="full softmax only"):
        ProbeConfig(probe="embedding", train=TrainConfig(tie_unseen=True))
    z, t, _ = symmetric_channel(8, 0.2, 200, seed=1)
    with pytest.raises(MissingUnembeddingError, match="needs unembedding=U"):
        fastmi.recoverability({0: z}, targets=single_token_bags(t), vocab_size=8, probe="embedding", progress=False)


def test_an_untied_models_input_embedding_is_a_second_start(tmp_path):
    """A cache of an untied model stores E apart from U; the embedding probe chooses among both on
    validation, and a damaged E is never read."""
    from tiny import make_tiny_model, random_sentences

    from fastmi.activations.cache import CacheCorruptError

    model_dir = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    cache = fastmi.extract(str(model_dir), random_sentences(80, seed=3), cache_dir=tmp_path / "cache", progress=False)
    assert cache.input_embedding().shape == cache.unembedding()[0].shape
    result = fastmi.recoverability(cache, probe="embedding", n_bootstrap=100, train=FAST, progress=False)
    assert {row["probe"] for row in result.table} == {"embedding"}
    assert result.config["unembedding_source"].endswith("; input embedding")
    starts = {log["start"].rsplit(" x", 1)[0] for log in result.config["training"].values()}
    assert starts <= {"prior", "embedding", "input embedding"}
    path = tmp_path / "cache" / "input_embedding.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match="checksum"):
        fastmi.ActivationCache.open(tmp_path / "cache").input_embedding()


def test_auto_trains_the_linear_probe_where_the_embedding_probe_cannot():
    """No rows (raw embeddings without unembedding=), a sampled softmax or tied unseen ids: 'auto'
    trains the linear probe, and says so in each row and in the config; with rows, it trains both
    forms and each row names the one kept."""
    z, t, _ = symmetric_channel(8, 0.2, 400, seed=3)
    common = dict(targets=single_token_bags(t), vocab_size=8, n_bootstrap=100, train=FAST, progress=False)
    cases = [
        ({}, "linear"),
        ({"unembedding": torch.eye(8)}, "auto"),
        ({"unembedding": torch.eye(8), "train_softmax": "sampled:4"}, "linear"),
        ({"unembedding": torch.eye(8), "train": TrainConfig(max_epochs=4, tie_unseen=True)}, "linear"),
    ]
    for settings, trained in cases:
        result = fastmi.recoverability({0: z}, **{**common, **settings})
        assert result.config["probe"] == "auto" and result.config["probe_trained"] == trained, settings
        assert result.table[0]["probe"] in (AUTO_FORMS if trained == "auto" else (trained,))
