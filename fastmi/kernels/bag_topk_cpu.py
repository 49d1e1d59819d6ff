"""Chunked torch path of :func:`fastmi.kernels.bag_topk`: row blocks against the whole vocabulary.

Memory is bounded by one [rows_per_block, V] fp32 logits block (about ``LOGITS_BUDGET`` elements),
never [B, V].  Each block is one ``addmm`` (torch's matmul is the fast part on a CPU), then
``torch.topk`` and ``torch.logsumexp`` over it.

``torch.topk`` leaves the order of equal values unspecified, so its ids are only trusted as a set
of values: :func:`exact_topk` rebuilds the ids so that a tie at the k-th value goes to the smaller
ids, and orders the result by (value descending, id ascending) like the reference's stable sort.
Also usable on CUDA tensors (the Triton launcher falls back to it for k above its bucket limit),
where the tie repair costs a host sync.
"""

from __future__ import annotations

import torch

# fp32 elements in one logits block: 8 Mi elements = 32 MiB.
LOGITS_BUDGET = 1 << 23


def exact_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Ids [R, k] of the k largest entries of each row of ``logits`` [R, V], ties to the smaller id.

    Sorted by value descending, equal values by id ascending.
    """
    # One more than k: a row whose (k+1)-th value equals its k-th is the only kind where topk's
    # choice among equal values can pick the wrong members of a tie group at the k-th place.
    extra = int(k < logits.shape[-1])
    values, ids = torch.topk(logits, k + extra, dim=-1, sorted=True)
    bad = (values[:, k] == values[:, k - 1]).nonzero().flatten() if extra else values.new_empty(0, dtype=torch.long)
    values, ids = values[:, :k], ids[:, :k]
    if bad.numel():
        # choose the group's members again: the smallest ids among the row's entries equal to the
        # k-th value, as many as topk kept
        rows, kth = logits[bad], values[bad, -1:]
        tied = rows == kth
        take = (values[bad] == kth).sum(-1, keepdim=True)
        chosen = (rows > kth) | (tied & (tied.cumsum(-1) <= take))
        ids = ids.clone()
        ids[bad] = chosen.nonzero()[:, 1].view(-1, k)  # exactly k per row, in id order
    # order by (value desc, id asc): sort by id, then a stable sort by value
    ids = ids.sort(dim=-1).values
    order = logits.gather(-1, ids).sort(dim=-1, descending=True, stable=True).indices
    return ids.gather(-1, order)


@torch.no_grad()
def bag_topk_cpu(
    z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int, rows_per_block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`fastmi.kernels.bag_topk` for one layer: z [B, d], weight [V, d]."""
    num_rows, vocab = z.shape[0], weight.shape[0]
    # fp32 once for the whole call: a bf16 matmul on CPU is slower and rounds the logits
    w = weight.float()
    b = bias.float() if bias is not None else None
    if rows_per_block is None:
        rows_per_block = max(1, LOGITS_BUDGET // max(vocab, 1))
    ids = torch.empty(num_rows, k, dtype=torch.int64, device=z.device)
    lse = torch.empty(num_rows, dtype=torch.float32, device=z.device)
    for start in range(0, num_rows, rows_per_block):
        block = slice(start, min(start + rows_per_block, num_rows))
        zb = z[block].float()
        logits = zb @ w.t() if b is None else torch.addmm(b, zb, w.t())
        lse[block] = torch.logsumexp(logits, dim=-1)
        ids[block] = exact_topk(logits, k)
    return ids, lse
