"""Which probe form a run trains, and the rows of the model's own embedding it trains with.

The unembedding probe computes through U's rows of the alphabet; the embedding probe starts from
them (:mod:`fastmi.probe.embedding_start`); ``"auto"`` is the embedding probe when they are at hand.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fastmi.data.alphabet import Alphabet
from fastmi.models.unembedding import MissingUnembeddingError, unembedding_for_alphabet
from fastmi.probe.config import ProbeConfig
from fastmi.probe.embedding_start import embedding_rows

__all__ = ["head_rows"]


def head_rows(source: Any, alphabet: Alphabet, given: Any, config: ProbeConfig):
    """(form, rows, bias or None, where they came from): the probe form trained and the rows of the
    model's embedding it uses: U's rows [M, d] for the unembedding probe; for the embedding probe,
    its candidate starts ``[(name, rows [M, d]), ...]`` (U's rows, and E's where the cache stores an
    input embedding apart from U); None for linear.  ``"auto"`` is the embedding probe where the
    model's rows are at hand (stored in the cache or given) and it can train (full softmax), else the
    linear probe; per layer, the embedding probe's start, 0 (the linear probe's own) among them, is
    then chosen on validation."""
    probe = config.probe
    if probe == "auto":
        trainable = config.train_softmax == "full" and not config.train.tie_unseen
        probe = "linear"
        if trainable:
            try:
                return ("embedding", *head_rows(source, alphabet, given, replace(config, probe="embedding"))[1:])
            except MissingUnembeddingError:
                pass
    if probe == "unembedding":
        return (probe, *_unembedding_rows(source, alphabet, given))
    if probe == "embedding":
        weight, _, where = unembedding_for_alphabet(source, alphabet.vocab_ids, False, given)
        candidates = [("embedding", embedding_rows(weight, alphabet.other))]
        # An untied model's input embedding E is a second start (tied models store U = E once).
        reader = getattr(source, "input_embedding", None) if given is None else None
        input_rows = reader(alphabet.vocab_ids) if reader is not None else None
        if input_rows is not None:
            candidates.append(("input embedding", embedding_rows(input_rows, alphabet.other)))
            where += "; input embedding"
        return probe, candidates, None, where
    return probe, None, None, None


def _unembedding_rows(source: Any, alphabet: Alphabet, given: Any):
    """U's rows (and bias) for the alphabet; the observed alphabet's "other" gets a zero row, so its
    logit is its bias alone (calibrated on validation like the linear probe's)."""
    if alphabet.setting != "observed" or not alphabet.other:
        return unembedding_for_alphabet(source, alphabet.vocab_ids, alphabet.other, given)
    weight, bias, where = unembedding_for_alphabet(source, alphabet.vocab_ids, False, given)
    weight = torch.cat([weight, weight.new_zeros(1, weight.shape[1])])
    return weight, None if bias is None else torch.cat([bias, bias.new_zeros(1)]), where
