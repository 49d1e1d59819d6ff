"""Plain torch references for the fused ops: readable, materialise every logit, ground truth.

Every fast path (Triton on CUDA or under the interpreter, the chunked CPU path) is tested against
these.  Shapes: ``z`` [B, d] or layer-batched [L, B, d]; ``weight`` [V, d] or [L, V, d]; ``bias``
[V], [L, V] or None.  Losses are in nats.
"""

from __future__ import annotations

import torch

POOL_MODES = ("mean", "first", "last", "max")
REDUCTIONS = ("mean", "sum", "none")
NORMALIZATIONS = ("row", "none")


def logits_reference(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 logits [..., B, V]."""
    logits = z.float() @ weight.float().transpose(-1, -2)
    if bias is not None:
        logits = logits + bias.float().unsqueeze(-2)
    return logits


def bag_cross_entropy_reference(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets,
    reduction: str = "mean",
    normalize: str = "row",
) -> torch.Tensor:
    """Per row ``C * LSE(Wz + b) - sum_k c_k (Wz + b)_{t_k}``, divided by ``C`` when normalize="row".

    ``C`` is the row's token count (sum of its counts).  Empty rows give 0.  ``reduction`` acts on
    the row axis only: "mean" averages over non-empty rows, so a layer-batched call returns [L].
    """
    logits = logits_reference(z, weight, bias)
    lse = torch.logsumexp(logits, dim=-1)
    rows, ids = targets.row_index, targets.ids
    counts = targets.counts.to(logits.dtype)
    target_sum = torch.zeros_like(lse).index_add_(-1, rows, counts * logits[..., rows, ids])
    tokens = targets.lengths.to(logits.dtype)
    loss = tokens * lse - target_sum
    if normalize == "row":
        loss = loss / tokens.clamp(min=1)
    elif normalize != "none":
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    return reduce_rows(loss, tokens > 0, reduction)


def reduce_rows(loss: torch.Tensor, nonempty: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum(-1)
    if reduction == "mean":
        return loss.sum(-1) / nonempty.sum().clamp(min=1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


@torch.no_grad()
def bag_topk_reference(
    z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids [..., B, k] (ties broken by the smaller id) and LSE [..., B] in fp32."""
    logits = logits_reference(z, weight, bias)
    # A stable descending sort keeps equal logits in id order, so the smaller id wins a tie.
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    return order[..., :k].contiguous(), torch.logsumexp(logits, dim=-1)


def masked_pool_reference(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool [B, T, d] over the positions where ``mask`` [B, T] is nonzero, in fp32 -> [B, d].

    "first" / "last" take the first / last unmasked position, whatever the padding side.  A row
    with no unmasked position pools to zeros.
    """
    h, m = hidden.float(), mask.bool()
    valid = m.any(dim=1, keepdim=True)
    if mode == "mean":
        # masked_fill, not a multiply: a NaN at a padded position must not leak into the mean.
        return h.masked_fill(~m.unsqueeze(-1), 0.0).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    if mode == "max":
        pooled = h.masked_fill(~m.unsqueeze(-1), float("-inf")).amax(1)
        return torch.where(valid, pooled, torch.zeros_like(pooled))
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    if mode == "first":
        index = torch.where(m, positions, m.shape[1]).amin(1).clamp(max=m.shape[1] - 1)
    elif mode == "last":
        index = torch.where(m, positions, -1).amax(1).clamp(min=0)
    else:
        raise ValueError(f"pooling mode must be one of {POOL_MODES}, got {mode!r}")
    pooled = h[torch.arange(h.shape[0], device=h.device), index]
    return torch.where(valid, pooled, torch.zeros_like(pooled))
