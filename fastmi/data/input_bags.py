"""Bags of a padded batch of ``input_ids``, built with vectorised torch ops on the batch's device.

A training step must not move every row to the host and back (``BagTargets.from_token_lists`` does,
for whole corpora).  Here each row is sorted once, excluded positions (padding, special tokens) are
pushed past the vocabulary with a sentinel, and one ``unique_consecutive`` over row-major keys
``row * (V + 1) + id`` yields the distinct ids of every row and their counts at once: the keys are
sorted within each row and rows are contiguous, so equal keys are adjacent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastmi.data.bags import BagTargets

__all__ = ["bags_from_input_ids"]


@torch.compiler.disable  # output sizes depend on the data: run eagerly between compiled graphs
def bags_from_input_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    exclude_ids: Sequence[int] | torch.Tensor = (),
    vocab_size: int | None = None,
) -> BagTargets:
    """CSR bags of the unmasked, non-excluded ids of each row of ``input_ids`` [B, T].

    Equals ``BagTargets.from_token_lists([ids[b][mask[b]] ...], exclude=exclude_ids)`` (tested),
    with every tensor on ``input_ids.device``.  Negative ids (e.g. -100 label padding) are
    treated as masked.  ``vocab_size`` checks that every kept id is below it.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    ids = input_ids.long()
    rows = ids.shape[0]
    keep = ids >= 0
    if attention_mask is not None:
        if attention_mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(ids.shape)}"
            )
        keep &= attention_mask.to(ids.device).bool()
    exclude = torch.as_tensor(
        list(exclude_ids) if not torch.is_tensor(exclude_ids) else exclude_ids, dtype=torch.long, device=ids.device
    )
    if exclude.numel():
        keep &= ~torch.isin(ids, exclude)
    kept_max = int(torch.where(keep, ids, -1).max()) if ids.numel() else -1
    if vocab_size is not None and kept_max >= vocab_size:
        raise ValueError(f"token id {kept_max} is out of range for a vocabulary of size {vocab_size}")
    sentinel = max(kept_max + 1, 0)  # one past every kept id: sorts last, dropped below
    values = torch.where(keep, ids, sentinel).sort(dim=1).values
    keys = (torch.arange(rows, device=ids.device)[:, None] * (sentinel + 1) + values).reshape(-1)
    unique, counts = torch.unique_consecutive(keys, return_counts=True)
    row_of, token = unique // (sentinel + 1), unique % (sentinel + 1)
    real = token != sentinel
    row_of, token, counts = row_of[real], token[real], counts[real]
    offsets = torch.zeros(rows + 1, dtype=torch.long, device=ids.device)
    torch.cumsum(torch.bincount(row_of, minlength=rows), 0, out=offsets[1:])
    return BagTargets(offsets, token, counts)
