"""CPU path of the bag-of-tokens cross-entropy: row blocks, one matmul each, never a [B, V] tensor.

For a block of ``Bc`` rows the logits ``[Bc, V]`` are one ``addmm``; the exact LSE and the softmax
are formed in place in that buffer, which then becomes the logit gradient
``coef_b * (C_b * softmax_b - counts_b)`` and is consumed at once by the two gradient products
(``grad_z[block] = dlogits @ W`` and ``grad_W += dlogits^T @ z[block]``, one fp32 accumulator,
blocks in order, so the result is deterministic).  The block is sized to stay a small fraction of
what a [B, V] tensor would take, yet large enough for the matmuls to run at full speed.

:func:`sweep` does either job, or both in one pass:

* ``lse=None``: compute the LSE and the target sums ``sum_k c_k logit_{t_k}`` (the forward);
* ``row_coef`` given: also (or, with ``lse`` given, only) form the gradients.  With both, the
  gradients come out of the forward's own pass: 6*B*d*V flops for forward + backward, like a naive
  implementation, instead of the 8 that recomputing the logits in the backward would cost.

Gradient filtering (``filter_eps``), per row block: the columns whose softmax is below
``filter_eps`` in every row of the block that takes part in the gradient (a non-empty bag and a
non-zero coefficient), and that hold none of the block's target ids, are left out of the two
gradient products: the kept columns of dlogits and the kept rows of W are gathered and the products
run on them only; grad_W rows of skipped columns get nothing from this block.  Per block because
that is the unit the products already run on; when nothing can be skipped the dense products run
unchanged.  The bias gradient (one cheap column sum) stays exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Bytes of the per-block logits buffer: small next to a [B, V] tensor (it is one of its
# B / block_rows slices), big enough that each block's matmuls reach the machine's matmul rate.
BLOCK_BYTES = 48 * 2**20


@dataclass
class LayerGrads:
    """fp32 gradient accumulators of every layer ([L, B, d], [L, V, d], [L, V]); None where not wanted."""

    z: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


def default_block_rows(vocab_size: int) -> int:
    rows = BLOCK_BYTES // (4 * max(vocab_size, 1))
    return max(16, min(1024, rows // 16 * 16))


def sweep(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bags,
    lse: torch.Tensor | None = None,
    row_coef: torch.Tensor | None = None,
    needs: tuple[bool, bool, bool] = (False, False, False),
    block_rows: int | None = None,
    filter_eps: float | None = None,
    logit_product: Callable | None = None,
    target_sum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, LayerGrads]:
    """One pass over the row blocks of every layer.

    ``z`` [L, B, d], ``weight`` [L, V, d], ``bias`` [L, V] or None; ``bags`` a
    :class:`~fastmi.kernels.bag_cross_entropy.PreparedBags`.  ``row_coef`` [L, B] is the gradient
    of the output with respect to each row's raw loss ``C * LSE - sum_k c_k logit_k``.

    ``filter_eps`` turns on gradient filtering (module docstring).

    ``logit_product(z_rows, w, b, out)`` writes a block's fp32 logits (default: torch's ``addmm``
    on fp32 copies; the Triton path passes its kernel, which takes bf16 operands as they are).  With
    it, the gradient products run in the operands' dtype (tensor cores), accumulated in fp32.
    ``target_sum`` [L, B], when given, is used as the forward's target sums instead of gathering
    them from the blocks (the Triton path computes them in a fixed order; a scatter-add of the
    gathered logits would use float atomics on a GPU).

    Returns ``(lse [L, B], target_sum [L, B] or None, grads)``, all fp32.
    """
    num_layers, num_rows, hidden = z.shape
    vocab = weight.shape[1]
    block_rows = block_rows or default_block_rows(vocab)
    forward = lse is None
    with_grads = row_coef is not None and any(needs)
    gather_targets = forward and target_sum is None
    if forward:
        lse = torch.empty(num_layers, num_rows, dtype=torch.float32, device=z.device)
        if gather_targets:
            target_sum = torch.zeros(num_layers, num_rows, dtype=torch.float32, device=z.device)
    else:
        target_sum = None
    fp32 = {"dtype": torch.float32, "device": z.device}
    grads = LayerGrads(
        z=torch.empty(num_layers, num_rows, hidden, **fp32) if with_grads and needs[0] else None,
        weight=torch.zeros(num_layers, vocab, hidden, **fp32) if with_grads and needs[1] else None,
        bias=torch.zeros(num_layers, vocab, **fp32) if with_grads and needs[2] else None,
    )
    buffer = torch.empty(min(block_rows, num_rows) * vocab, **fp32)
    for layer in range(num_layers):
        if logit_product is None:
            # Low-precision inputs are widened once per layer: fp32 accumulation without a cast per block.
            w = weight[layer].float()
            b = None if bias is None else bias[layer].float()
            zl = z[layer].float()
        else:
            w, zl, b = weight[layer], z[layer], None if bias is None else bias[layer]
        for start in range(0, num_rows, block_rows):
            stop = min(start + block_rows, num_rows)
            block = bags.block(start, stop)
            logits = buffer[: (stop - start) * vocab].view(stop - start, vocab)
            if logit_product is not None:
                logit_product(zl[start:stop], w, b, logits)
            elif b is None:
                torch.mm(zl[start:stop], w.t(), out=logits)
            else:
                torch.addmm(b, zl[start:stop], w.t(), out=logits)
            flat_targets = logits.view(-1)
            if forward:
                # The bag's logits are read from the block just computed: exactly the values the
                # LSE sees, a gather of nnz entries rather than a scan over V.
                if gather_targets:
                    picked = flat_targets[block.flat_index] * block.counts
                    target_sum[layer, start:stop].index_add_(0, block.local_rows, picked)
                peak = logits.amax(1, keepdim=True)
                logits.sub_(peak).exp_()
                sum_exp = logits.sum(1)
                lse[layer, start:stop] = peak.squeeze(1) + sum_exp.log()
                if not with_grads:
                    continue
                scale = row_coef[layer, start:stop] * block.lengths / sum_exp
                # logits hold exp(l - peak): softmax < eps  <=>  logits < eps * sum_exp
                threshold = None if filter_eps is None else filter_eps * sum_exp
            else:
                logits.sub_(lse[layer, start:stop, None]).exp_()
                scale = row_coef[layer, start:stop] * block.lengths
                threshold = None if filter_eps is None else torch.full_like(scale, filter_eps)
            kept = None if threshold is None else _kept_columns(logits, threshold, scale, block.ids)
            # logits -> dlogits = coef * (C * softmax - counts at the bag's ids)
            logits.mul_(scale[:, None])
            coef = row_coef[layer, start:stop]
            flat_targets.index_add_(0, block.flat_index, -(coef[block.local_rows] * block.counts))
            # the products' operands: fp32 here, or the inputs' low precision (fp32 accumulation)
            dlogits = logits if w.dtype == torch.float32 else logits.to(w.dtype)
            if kept is None:
                if grads.z is not None:
                    _product_into(grads.z[layer, start:stop], dlogits, w)
                if grads.weight is not None:
                    if w.dtype == torch.float32:
                        grads.weight[layer].addmm_(dlogits.t(), zl[start:stop])
                    else:
                        grads.weight[layer].add_(_fp32_product(dlogits.t(), zl[start:stop]))
            else:
                kept_dlogits = dlogits.index_select(1, kept)
                if grads.z is not None:
                    _product_into(grads.z[layer, start:stop], kept_dlogits, w.index_select(0, kept))
                if grads.weight is not None:
                    grads.weight[layer].index_add_(0, kept, _fp32_product(kept_dlogits.t(), zl[start:stop]))
            if grads.bias is not None:
                grads.bias[layer].add_(logits.sum(0))
    return lse, target_sum, grads


def _fp32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as fp32; bf16/fp16 operands keep an fp32 result on CUDA (no rounding to their dtype)."""
    if a.dtype == torch.float32:
        return a @ b
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # a torch without mm's out_dtype (before 2.8)
            pass
    return (a @ b).float()


def _product_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype == torch.float32:
        torch.mm(a, b, out=out)
    else:
        out.copy_(_fp32_product(a, b))


def _kept_columns(
    exp_logits: torch.Tensor, threshold: torch.Tensor, scale: torch.Tensor, target_ids: torch.Tensor
) -> torch.Tensor | None:
    """Ids of the columns the block's gradient products must keep, or None to keep them all.

    ``exp_logits`` [Bc, V] is proportional per row to the softmax (``threshold`` [Bc] the matching
    per-row threshold); rows with a zero ``scale`` (empty bag, zero coefficient) have zero
    dlogits and decide nothing.  Target columns are always kept.
    """
    threshold = torch.where(scale != 0, threshold, torch.inf)
    keep = (exp_logits >= threshold[:, None]).any(0)
    keep[target_ids] = True
    kept = keep.nonzero().squeeze(1)
    return None if kept.numel() == keep.numel() else kept
