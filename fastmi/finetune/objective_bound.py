"""E1 of the third claim's test (docs/finetune.md): the held-out bound of what the term trains.

The recoverability term trains a linear probe on the full vocabulary (special tokens excluded), on
each token's layer-normalised state (no affine) mean-pooled over the sentence, and the variational
bound it raises is H(T) - CE.  E1 measures that same quantity on sentences the tuning never saw: a
*fresh* probe of the same alphabet, normalisation and pooling, fitted on the probe part of the
claim's split and scored on its held-out part.  The sweep's default setting (E2) reads raw pooled
states over another alphabet, so a change in one need not show in the other.

* :func:`term_pooled_states`: the pooled states the term's probe reads, per layer
  (:func:`fastmi.finetune.loss.pool_states`, the training code's own pooling), and each sentence's bag.
* :func:`objective_bound`: the fresh probe (the library's :func:`fastmi.recoverability`, not a
  trainer of its own) and, per layer, each held-out sentence's H(T) - CE in bits, so that runs can be
  paired sentence by sentence (:func:`fastmi.stats.seeded_bootstrap.two_level_interval`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from fastmi.data.bags import BagTargets

__all__ = ["TermFeatures", "term_pooled_states", "objective_bound"]

TERM_POOLING = "mean"  # fastmi finetune's default, the one the plan's runs train with


@dataclass
class TermFeatures:
    """What the term's probe reads, for every sentence: per layer the pooled states [N, d]; each
    sentence's bag over the tokenizer's vocabulary, special ids left out as the term leaves them out;
    and those ids."""

    states: dict[int, torch.Tensor]
    bags: BagTargets
    vocab_size: int
    excluded_ids: list[int]


@torch.no_grad()
def term_pooled_states(
    model,
    tokenizer,
    token_lists: Sequence[Sequence[int]],
    layers: Sequence[int],
    batch_size: int = 32,
) -> TermFeatures:
    """The term's view of each sentence: ``model``'s ``hidden_states[layer]`` (index 0: the embeddings),
    per-token layer norm, mean over the sentence's tokens (special tokens included, as in training),
    and the bag of its ids without the special ones.  ``token_lists``: ids as training tokenised them
    (:meth:`fastmi.Corpus.tokenize` with the run's ``max_length``)."""
    from fastmi.finetune.loss import pool_states

    model.eval()  # dropout off: the states of the model, not of one noisy pass
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    chunks: dict[int, list[torch.Tensor]] = {int(layer): [] for layer in layers}
    for start in range(0, len(token_lists), batch_size):
        rows = token_lists[start : start + batch_size]
        width = max(1, max(map(len, rows)))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, : len(row)] = 1
        hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        hidden = hidden["hidden_states"]
        for layer in chunks:
            if not 0 <= layer < len(hidden):
                raise ValueError(f"layer {layer} is not among the model's {len(hidden)} hidden states")
            chunks[layer].append(pool_states(hidden[layer], mask.to(device), TERM_POOLING, normalize=True).cpu())
    special = sorted({int(i) for i in tokenizer.all_special_ids})
    vocab_size = len(tokenizer)
    bags = BagTargets.from_token_lists(token_lists, exclude=special, vocab_size=vocab_size)
    return TermFeatures({layer: torch.cat(parts) for layer, parts in chunks.items()}, bags, vocab_size, special)


def objective_bound(
    features: TermFeatures,
    split,
    checkpoint_dir: str | os.PathLike | None = None,
    model: str = "term",
    **probe_settings,
) -> dict[int, dict]:
    """Per layer of ``features``: a fresh linear probe over the full vocabulary (special ids excluded),
    fitted on ``split``'s train rows (early-stopped on its validation rows) and scored on its held-out
    rows, as ``{"rows", "values", "H_T", "bound_bits", "converged"}``.

    ``rows``: the held-out rows with a non-empty bag (indices of ``features``' sentences), ascending;
    ``values``: each one's H(T) - CE in bits, whose mean is ``bound_bits``, not clamped at 0 (a
    contrast of clamped bounds would be biased; the table's ``variational_bits`` clamps) (H(T): the plug-in
    entropy of the held-out token marginal, the same for every model scored on these sentences with
    this tokenizer, so a difference of two models' means is a difference of their CEs).
    ``probe_settings``: further :class:`fastmi.probe.config.ProbeConfig` fields (``train``, ...).
    """
    from fastmi.probe.config import ProbeConfig, TrainConfig
    from fastmi.probe.recoverability import recoverability

    train = probe_settings.pop("train", TrainConfig())
    if train.tie_unseen is None:
        # The ids no training bag holds as one tied row: the same problem as the untied full softmax
        # (exact), and about ten times cheaper over a 30k vocabulary (docs/performance.md).
        train = replace(train, tie_unseen=True)
    config = ProbeConfig(
        vocab="full", probe="linear", seed=split.seed, test_fraction=split.test_fraction, train=train, **probe_settings
    )
    result = recoverability(
        dict(features.states),
        config,
        targets=features.bags,
        vocab_size=features.vocab_size,
        split=split,
        model=model,
        excluded_ids=features.excluded_ids,
        progress=False,
        checkpoint_dir=checkpoint_dir,
    )
    held = result.held_out[model]
    out = {}
    for row in result.table:
        layer = int(row["layer"])
        values = float(row["H_T"]) - np.asarray(held.layers[layer]["ce_bits"], dtype=np.float64)
        out[layer] = {
            "rows": held.rows.astype(np.int64),
            "values": values,
            "H_T": float(row["H_T"]),
            "bound_bits": float(values.mean()),  # not clamped at 0, as the table's bounds are
            "converged": bool(row["converged"]),
        }
    return out
