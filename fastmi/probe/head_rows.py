"""Which probe form a run trains, and the rows of the model's own embedding it trains with.

The unembedding probe computes through U's rows of the alphabet; the embedding probe starts from
them (:mod:`fastmi.probe.embedding_start`); ``"auto"`` trains both when they are at hand.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fastmi.data.alphabet import Alphabet
from fastmi.models.unembedding import MissingUnembeddingError, unembedding_for_alphabet
from fastmi.probe.config import ProbeConfig
from fastmi.probe.embedding_start import embedding_rows
from fastmi.probe.form_choice import FORMS

__all__ = ["head_rows"]


def head_rows(source: Any, alphabet: Alphabet, given: Any, config: ProbeConfig):
    """(form, rows, bias or None, where they came from): the probe form trained and the rows of the
    model's embedding it uses: U's rows [M, d] for the unembedding probe; for the embedding probe,
    its candidate starts ``[(name, rows [M, d]), ...]`` (U's rows, and E's where the cache stores an
    input embedding apart from U); None for linear.

    ``"auto"`` trains both where the model's rows are at hand (stored in the cache or given) and the
    softmax is full, and keeps the better per layer on validation (:mod:`fastmi.probe.form_choice`):
    its rows are ``{form: (rows, bias)}``.  Elsewhere (no rows, sampled softmax, tied unseen ids) it
    is the linear probe."""
    probe = config.probe
    if probe == "auto":
        trainable = config.train_softmax == "full" and not config.train.tie_unseen
        if not trainable:
            return "linear", None, None, None
        try:
            rows = {form: head_rows(source, alphabet, given, replace(config, probe=form)) for form in FORMS}
        except MissingUnembeddingError:
            return "linear", None, None, None
        heads = {form: (form_rows[1], form_rows[2]) for form, form_rows in rows.items()}
        return "auto", heads, None, rows["embedding"][3]
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
    """U's rows (and bias) for the alphabet; "other" (observed or top:K) gets a zero row, so its
    logit is its bias alone: trained for top:K, calibrated on validation for observed."""
    if not alphabet.other:
        return unembedding_for_alphabet(source, alphabet.vocab_ids, False, given)
    weight, bias, where = unembedding_for_alphabet(source, alphabet.vocab_ids, False, given)
    weight = torch.cat([weight, weight.new_zeros(1, weight.shape[1])])
    return weight, None if bias is None else torch.cat([bias, bias.new_zeros(1)]), where
