"""Held-out evaluation helpers of docs/finetune.md: topic probe, LM losses, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmi.finetune.evaluation import bootstrap_interval, lm_token_losses, topic_probe_correct
from tests.tiny import make_tiny_model, random_sentences


def test_topic_probe_separates_separable_classes_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centers = rng.normal(size=(3, 8)) * 3
    informative = centers[labels] + rng.normal(size=(300, 8))
    train, test = np.arange(200), np.arange(200, 300)
    assert topic_probe_correct(informative, labels, train, test).mean() > 0.9
    noise = rng.normal(size=(300, 8))
    assert topic_probe_correct(noise, labels, train, test).mean() < 0.6


def test_bootstrap_interval_brackets_the_mean_and_is_paired():
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 1.0, 400)
    point, low, high = bootstrap_interval(lambda rows: float(a[rows].mean()), a.size)
    assert low < point < high and low < 1.0 < high
    # Paired: b = a + 0.1 exactly, so every resample's difference is 0.1 (an unpaired one would be wide).
    b = a + 0.1
    d = bootstrap_interval(lambda rows: float(b[rows].mean() - a[rows].mean()), a.size)
    assert d == pytest.approx((0.1, 0.1, 0.1))


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_lm_token_losses_match_the_model_loss(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    path = make_tiny_model(arch, tmp_path / arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if arch == "bert":
        tokenizer.mask_token = "<s>"
    torch.manual_seed(0)
    model = (AutoModelForCausalLM if arch == "llama" else AutoModelForMaskedLM).from_pretrained(path)
    sentences = random_sentences(6, seed=2, min_words=3)
    nll, count = lm_token_losses(model, tokenizer, sentences, "decoder" if arch == "llama" else "encoder", batch_size=4)
    assert (count > 0).all()
    if arch == "llama":  # per sentence, the model's own mean loss times its predicted tokens
        for i, s in enumerate(sentences):
            ids = torch.tensor([tokenizer(s)["input_ids"]])
            with torch.no_grad():
                expected = model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            assert nll[i] == pytest.approx(expected, rel=1e-5)
    else:  # masks are fixed by the seed: a second call gives the same numbers
        again = lm_token_losses(model, tokenizer, sentences, "encoder", batch_size=3)
        assert np.allclose(again[0], nll) and np.array_equal(again[1], count)
