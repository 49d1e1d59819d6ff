"""Scoring fitted probes on held-out sentences: per-sentence errors, cross-entropy and bag recall.

Everything is per sentence, because the sentence (not the token) is the unit of independence the
confidence limits resample.  Predictions come from :func:`fastmi.kernels.bag_topk`, so no [B, M]
tensor is built here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastmi import kernels
from fastmi.data.bags import BagTargets

__all__ = ["HeldOutScores", "score_probes", "bag_counts_of"]


@dataclass
class HeldOutScores:
    """Per layer and held-out sentence, float64 [L, N]."""

    errors: torch.Tensor  # 1 - count(top-1 id) / n
    errors_k: torch.Tensor  # 1 - sum of counts of the top-k ids / n
    ce_bits: torch.Tensor  # (1/n) sum_i -log2 q(x_i | z)
    bag_recall: torch.Tensor  # share of the bag's distinct ids among the top-|bag| predictions

    FIELDS = ("errors", "errors_k", "ce_bits", "bag_recall")


def bag_counts_of(predicted: torch.Tensor, targets: BagTargets, alphabet_size: int) -> torch.Tensor:
    """Count in row b's bag of each id ``predicted[..., b, j]`` (0 when absent), without a [B, M] table.

    Row-major keys ``row * M + id`` of the bag entries are sorted (rows ascending, ids sorted within a
    row), so one ``searchsorted`` finds every prediction.
    """
    keys = targets.row_index * alphabet_size + targets.ids
    rows = torch.arange(predicted.shape[-2], device=predicted.device).unsqueeze(-1)
    queries = (rows * alphabet_size + predicted).contiguous()
    if keys.numel() == 0:
        return torch.zeros_like(queries)
    position = torch.searchsorted(keys, queries).clamp(max=keys.numel() - 1)
    return torch.where(keys[position] == queries, targets.counts[position], torch.zeros_like(queries))


@torch.no_grad()
def score_probes(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: BagTargets,
    alphabet_size: int,
    k: int,
    chunk: int = 1024,
) -> HeldOutScores:
    """Score probes ``weight`` [L, M, d], ``bias`` [L, M] on features ``z`` [L, N, d] of non-empty rows."""
    num_layers, num_rows, _ = z.shape
    k_eval = min(k, alphabet_size)
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, num_rows, chunk):
        rows = torch.arange(start, min(start + chunk, num_rows), device=z.device)
        bags = targets.select(rows)
        lengths = bags.lengths.double()
        sizes = bags.bag_sizes
        # One top-K call serves top-1, top-k and bag recall (which needs the top-|bag| ids).
        depth = min(alphabet_size, max(k_eval, int(sizes.max())))
        top_ids, _ = kernels.bag_topk(z[:, rows], weight, bias, depth)
        counts = bag_counts_of(top_ids, bags, alphabet_size).double()  # [L, B, depth]
        errors = 1.0 - counts[..., 0] / lengths
        errors_k = 1.0 - counts[..., :k_eval].sum(-1) / lengths
        within_bag = torch.arange(depth, device=z.device) < sizes.unsqueeze(-1)  # [B, depth]
        recall = ((counts > 0) & within_bag).sum(-1).double() / sizes.double()
        ce = kernels.bag_cross_entropy(z[:, rows], weight, bias, bags, reduction="none").double() / math.log(2)
        parts.append((errors, errors_k, ce, recall))
    errors, errors_k, ce, recall = (torch.cat(p, dim=1).cpu() for p in zip(*parts))
    return HeldOutScores(errors=errors.clamp(0, 1), errors_k=errors_k.clamp(0, 1), ce_bits=ce, bag_recall=recall)
