"""Batches of an extraction: rows of similar length together, longest first, padded on one side.

The batches of a shard are a pure function of its rows' lengths (a stable sort), so every bit of
an extracted shard depends only on the corpus, the shard and the batch size, never on which
process ran it or when.  The planner replays the same plan (:func:`batch_plan`) to count padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["batches_by_length", "batch_plan", "collate"]


def batches_by_length(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Positions of ``lengths`` grouped into batches of similar length, longest first.

    Zero-length rows are left out (they pool to zeros without a forward).  The sort is stable, so
    the batches, and therefore every bit of the result, depend only on the lengths.
    """
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


def batch_plan(lengths: np.ndarray, shard_rows: int, batch_size: int) -> list[np.ndarray]:
    """Corpus rows of every batch, in the order :func:`fastmi.extract` runs them (shard by shard)."""
    return [
        positions + start
        for start in range(0, lengths.size, shard_rows)
        for positions in batches_by_length(lengths[start : start + shard_rows], batch_size)
    ]


def collate(token_lists: Sequence[Sequence[int]], pad_id: int, side: str, device, parameters: set[str]) -> dict:
    """Pad to the longest row on ``side``; positions count real tokens only, so padding never shifts them."""
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, row in enumerate(token_lists):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        mask[i, span] = 1
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if "position_ids" in parameters:
        inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0).to(device)
    if "use_cache" in parameters:
        inputs["use_cache"] = False
    return inputs
