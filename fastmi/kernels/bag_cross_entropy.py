"""Fused linear + softmax + bag-of-tokens cross-entropy: the probe's loss, never a [B, V] tensor.

Per row ``C * LSE(W z + b) - sum_k c_k (W z + b)_{t_k}`` (divided by ``C`` when normalize="row"),
``C`` the row's token count; :func:`fastmi.kernels.reference.bag_cross_entropy_reference` is the
ground truth.  This module holds the public function, the argument checks, and the autograd
Function that hands the work to a backend:

* Scalar loss with gradients (training): the row-block sweep of ``bag_cross_entropy_cpu``.  The
  gradients are formed during the forward (one pass, 6*B*d*V flops, as cheap as the naive
  version) and only scaled by the incoming gradient in the backward.  On CPU the logit product is
  torch's matmul; on the Triton path it is a Triton kernel (fp32 logits of bf16 operands).
* Otherwise (no gradient, or reduction="none"): on CPU the same sweep; on Triton
  (``bag_cross_entropy_triton``) a forward split over vocabulary and layers, and a backward that
  recomputes logit tiles from the saved LSE.

Compute dtype (``_dtypes.compute_dtype``): z and W are rounded to one dtype before their products,
the weight's (or autocast's when it is on); products, LSE and gradients accumulate in fp32.

Optional gradient filtering (``filter_eps``): the gradient products skip the vocabulary columns
whose softmax is below ``filter_eps`` in every row of a group of rows and that hold none of the
group's target ids.  The group is a row block on the CPU path and all B rows (one vocabulary chunk
at a time) on the Triton path.  Only the gradients of z and W are approximated: each dropped
dlogit is below ``|coef_b| * C_b * filter_eps``; the loss and the bias gradient stay exact.
"""

from __future__ import annotations

import math
import sys

import torch

from fastmi.kernels import bag_cross_entropy_cpu
from fastmi.kernels._dispatch import choose_backend
from fastmi.kernels._dtypes import compute_dtype
from fastmi.kernels.reference import NORMALIZATIONS, REDUCTIONS, bag_cross_entropy_reference

__all__ = ["bag_cross_entropy", "PreparedBags"]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def bag_cross_entropy(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets,
    reduction: str = "mean",
    normalize: str = "row",
    *,
    validate: bool = True,
    block_rows: int | None = None,
    filter_eps: float | None = None,
) -> torch.Tensor:
    """Bag-of-tokens cross-entropy of ``softmax(W z + b)`` in nats, fp32.

    Args:
        z: [B, d], or [L, B, d] for L layers at once.
        weight: [V, d] or [L, V, d]; bias: [V] or [L, V] or None.  fp32, bf16 or fp16, in any mix:
            z and W are rounded to one compute dtype before their products (the weight's dtype, or
            autocast's dtype when autocast is on; :func:`fastmi.kernels.compute_dtype`), and every
            product accumulates in fp32.  The bias is added in fp32.
        targets: bags in CSR form (anything with int64 ``offsets``/``ids``/``counts``, e.g.
            :class:`fastmi.BagTargets`) with B rows, shared by all layers.
        reduction: "mean" over non-empty rows, "sum", or "none" (per row).  Acts on the row axis
            only: layer-batched calls return [L] (or [L, B]).
        normalize: "row" divides each row's loss by its token count C; "none" does not.
        validate: check that every id lies in [0, V).  A :class:`fastmi.BagTargets` remembers its
            id range (and hands it to its ``select``-ed subsets), so this costs one host sync per
            bag set, not per call; other targets are checked on every call.
        block_rows: rows per block of the row-block sweep (CPU path; Triton path for a scalar
            loss).  Default: a ~48 MiB (CPU) / 256 MiB (GPU) fp32 logits block.
        filter_eps: gradient filtering, off (None) by default.  When set (a float in (0, inf)),
            the z and W gradients leave out the vocabulary columns whose softmax probability is
            below ``filter_eps`` in every row of a row block (scalar loss) / of the batch (Triton,
            reduction="none", per vocabulary chunk) and that hold no target id of those rows: a
            column holding a target is never skipped.  The loss and the bias gradient are exact;
            each left-out dlogit is below ``|coef| * C * filter_eps`` (coef the row's incoming
            gradient factor).  The reference backend ignores it (exact gradients).  Opt-in: it
            costs a host sync per block (the count of kept columns).

    Rows with an empty bag give 0 and no gradient.  Gradients come back in the inputs' dtypes.
    Under ``torch.compile`` the op runs eagerly between the compiled graphs (one graph break).
    """
    if "torch._dynamo" in sys.modules:  # only then can a compile be tracing this call
        return _compiler_disabled()(
            z,
            weight,
            bias,
            targets,
            reduction,
            normalize,
            validate=validate,
            block_rows=block_rows,
            filter_eps=filter_eps,
        )
    return _bag_cross_entropy(
        z, weight, bias, targets, reduction, normalize, validate=validate, block_rows=block_rows, filter_eps=filter_eps
    )


_DISABLED: dict[str, object] = {}


def _compiler_disabled():
    # Dynamo cannot trace the host-side parts (argument checks that read ids, block loops over the
    # CSR offsets), so under torch.compile the op runs eagerly between the compiled graphs: one graph
    # break, the same results as eager, no re-tracing on every new bag layout.  Built on first use
    # once dynamo is loaded: importing torch._dynamo costs seconds, which a plain import must not pay.
    if "fn" not in _DISABLED:
        _DISABLED["fn"] = torch.compiler.disable(_bag_cross_entropy)
    return _DISABLED["fn"]


def _bag_cross_entropy(z, weight, bias, targets, reduction, normalize, *, validate, block_rows, filter_eps):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    _check_filter_eps(filter_eps)
    _check_inputs(z, weight, bias, targets, validate)
    dtype = compute_dtype(z, weight)
    z, weight = z.to(dtype), weight.to(dtype)  # autograd casts the gradients back
    implementation = choose_backend(z)
    if implementation == "reference":
        return bag_cross_entropy_reference(z, weight, bias, targets, reduction, normalize)
    offsets, ids, counts = (t.to(z.device) for t in (targets.offsets, targets.ids, targets.counts))
    return _apply(
        z,
        weight,
        bias,
        offsets,
        ids,
        counts,
        reduction,
        normalize,
        implementation,
        block_rows,
        None if filter_eps is None else float(filter_eps),
    )


def _check_filter_eps(filter_eps) -> None:
    if filter_eps is None:
        return
    if isinstance(filter_eps, bool) or not isinstance(filter_eps, (int, float)):
        raise TypeError(f"filter_eps must be a float or None, got {type(filter_eps).__name__}")
    if not (filter_eps > 0 and math.isfinite(filter_eps)):  # NaN fails the comparison
        raise ValueError(
            f"filter_eps must be a positive finite float (a softmax threshold) or None, got {filter_eps!r}"
        )


def _apply(z, weight, bias, offsets, ids, counts, reduction, normalize, implementation, block_rows, filter_eps=None):
    # Inside Function.forward grad mode is off and needs_input_grad ignores an outer no_grad,
    # so whether gradients will be wanted at all is decided here.
    grad_enabled = torch.is_grad_enabled()
    # The compute dtype is settled (z and W cast above): autocast must not re-cast the matmuls inside.
    with torch.autocast(z.device.type, enabled=False):
        return _BagCrossEntropy.apply(
            z,
            weight,
            bias,
            offsets,
            ids,
            counts,
            reduction,
            normalize,
            implementation,
            block_rows,
            filter_eps,
            grad_enabled,
        )


class PreparedBags:
    """The CSR bags plus what every backend derives from them once per call (all on one device).

    ``row_of`` [nnz] row of each entry; ``lengths`` [B] token counts C (fp32); ``counts`` fp32.
    """

    def __init__(self, offsets: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor, vocab_size: int):
        num_rows = offsets.numel() - 1
        self.offsets, self.ids, self.vocab_size = offsets, ids, vocab_size
        self.counts = counts.to(torch.float32)
        # output_size keeps repeat_interleave free of a host sync on a GPU.
        self.row_of = torch.repeat_interleave(
            torch.arange(num_rows, device=offsets.device), offsets[1:] - offsets[:-1], output_size=ids.numel()
        )
        self.lengths = torch.zeros(num_rows, dtype=torch.float32, device=offsets.device).index_add_(
            0, self.row_of, self.counts
        )
        self._host_offsets: list[int] | None = None

    def block(self, start: int, stop: int) -> _BagBlock:
        """The entries of rows [start, stop) with row-local indices (CPU path)."""
        if self._host_offsets is None:
            self._host_offsets = self.offsets.tolist()
        lo, hi = self._host_offsets[start], self._host_offsets[stop]
        local_rows = self.row_of[lo:hi] - start
        return _BagBlock(
            local_rows=local_rows,
            ids=self.ids[lo:hi],
            flat_index=local_rows * self.vocab_size + self.ids[lo:hi],
            counts=self.counts[lo:hi],
            lengths=self.lengths[start:stop],
        )


class _BagBlock:
    __slots__ = ("local_rows", "ids", "flat_index", "counts", "lengths")

    def __init__(self, local_rows, ids, flat_index, counts, lengths):
        self.local_rows, self.ids, self.flat_index = local_rows, ids, flat_index
        self.counts, self.lengths = counts, lengths


class _BagCrossEntropy(torch.autograd.Function):
    """Works on layer-batched views ([L, B, d], [L, V, d], [L, V]); a single layer is L = 1.

    The views are taken here, not by the caller, so the gradients autograd receives are plain
    tensors it can keep without a copy.
    """

    @staticmethod
    def forward(
        ctx,
        z,
        weight,
        bias,
        offsets,
        ids,
        counts,
        reduction,
        normalize,
        implementation,
        block_rows,
        filter_eps,
        grad_enabled,
    ):
        ctx.shapes = (z.shape, weight.shape, None if bias is None else bias.shape)
        if z.dim() == 2:
            z, weight, bias = z[None], weight[None], None if bias is None else bias[None]
        bags = PreparedBags(offsets, ids, counts, weight.shape[1])
        row_norm = 1.0 / bags.lengths.clamp(min=1) if normalize == "row" else torch.ones_like(bags.lengths)
        nonempty = (bags.lengths > 0).sum().clamp(min=1)
        needs = tuple(grad_enabled and bool(n) for n in ctx.needs_input_grad[:3])
        # Scalar loss: form the gradients in the forward's own pass, scale them in the backward.
        fused = reduction != "none" and any(needs)
        grads = None
        coef = None
        if fused:
            coef = row_norm / nonempty if reduction == "mean" else row_norm
            coef = coef.expand(z.shape[0], -1)
        if implementation == "cpu":
            lse, target_sum, grads = bag_cross_entropy_cpu.sweep(
                z, weight, bias, bags, row_coef=coef, needs=needs, block_rows=block_rows, filter_eps=filter_eps
            )
        else:
            from fastmi.kernels import bag_cross_entropy_triton as triton_path

            if fused:
                # The row-block sweep with the Triton logit product: 6*B*d*V flops in all.
                lse, target_sum, grads = bag_cross_entropy_cpu.sweep(
                    z,
                    weight,
                    bias,
                    bags,
                    row_coef=coef,
                    needs=needs,
                    block_rows=block_rows or triton_path.block_rows(weight.shape[1]),
                    filter_eps=filter_eps,
                    logit_product=triton_path.logits_into,
                    target_sum=triton_path.target_sums(z, weight, bias, bags),
                )
            else:
                lse, target_sum = triton_path.forward(z, weight, bias, bags)
        row_loss = (bags.lengths * lse - target_sum) * row_norm
        if reduction == "none":
            loss = row_loss
        else:
            loss = row_loss.sum(-1)
            if reduction == "mean":
                loss = loss / nonempty
        single_layer = len(ctx.shapes[0]) == 2
        ctx.setup = (reduction, implementation, block_rows, needs, bags, row_norm, nonempty, filter_eps)
        ctx.dtypes = (z.dtype, weight.dtype, None if bias is None else bias.dtype)
        if fused:
            ctx.fused_grads = grads
            ctx.save_for_backward()
        else:
            ctx.fused_grads = None
            ctx.save_for_backward(z, weight, bias, lse)
        return loss[0] if single_layer else loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        with torch.autocast(grad_loss.device.type, enabled=False):
            return _BagCrossEntropy._backward(ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss):
        reduction, implementation, block_rows, needs, bags, row_norm, nonempty, filter_eps = ctx.setup
        num_layers = ctx.shapes[1][0] if len(ctx.shapes[1]) == 3 else 1
        grad_loss = (
            grad_loss.float().reshape(num_layers, -1) if reduction == "none" else grad_loss.float().reshape(num_layers)
        )
        if ctx.fused_grads is not None:
            grads, ctx.fused_grads = ctx.fused_grads, None
            per_layer = grad_loss.view(-1)
            dz = None if grads.z is None else grads.z.mul_(per_layer.view(-1, 1, 1))
            dw = None if grads.weight is None else grads.weight.mul_(per_layer.view(-1, 1, 1))
            db = None if grads.bias is None else grads.bias.mul_(per_layer.view(-1, 1))
        else:
            z, weight, bias, lse = ctx.saved_tensors
            if reduction == "none":
                coef = grad_loss * row_norm
            elif reduction == "sum":
                coef = grad_loss[:, None] * row_norm
            else:
                coef = grad_loss[:, None] * row_norm / nonempty
            if implementation == "cpu":
                _, _, grads = bag_cross_entropy_cpu.sweep(
                    z,
                    weight,
                    bias,
                    bags,
                    lse=lse,
                    row_coef=coef,
                    needs=needs,
                    block_rows=block_rows,
                    filter_eps=filter_eps,
                )
                dz, dw, db = grads.z, grads.weight, grads.bias
            else:
                from fastmi.kernels import bag_cross_entropy_triton

                dz, dw, db = bag_cross_entropy_triton.backward(
                    z, weight, bias, bags, lse, coef, needs, filter_eps=filter_eps
                )
        z_dtype, w_dtype, b_dtype = ctx.dtypes
        z_shape, w_shape, b_shape = ctx.shapes
        dz = None if dz is None else dz.to(z_dtype).view(z_shape)
        dw = None if dw is None else dw.to(w_dtype).view(w_shape)
        db = None if db is None else db.to(b_dtype).view(b_shape)
        return dz, dw, db, None, None, None, None, None, None, None, None, None


def _check_inputs(z, weight, bias, targets, validate: bool) -> None:
    layered = z.dim() == 3
    if z.dim() not in (2, 3):
        raise ValueError(f"z must be [B, d] or [L, B, d], got shape {tuple(z.shape)}")
    if weight.dim() != z.dim():
        raise ValueError(f"weight must be {'[L, V, d]' if layered else '[V, d]'} to match z, got {tuple(weight.shape)}")
    if weight.shape[-1] != z.shape[-1]:
        raise ValueError(f"z has d={z.shape[-1]} but weight has d={weight.shape[-1]}")
    if layered and weight.shape[0] != z.shape[0]:
        raise ValueError(f"z has L={z.shape[0]} layers but weight has {weight.shape[0]}")
    if bias is not None and bias.shape != weight.shape[:-1]:
        raise ValueError(f"bias must have shape {tuple(weight.shape[:-1])}, got {tuple(bias.shape)}")
    for name, t in (("z", z), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be fp32, bf16 or fp16, got {t.dtype}")
        if t is not None and t.device != z.device:
            raise ValueError(f"{name} is on {t.device} but z is on {z.device}")
    offsets, ids, counts = targets.offsets, targets.ids, targets.counts
    for name, t in (("offsets", offsets), ("ids", ids), ("counts", counts)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"targets.{name} must be a 1-D int64 tensor, got {t.dtype} {tuple(t.shape)}")
    if offsets.numel() - 1 != z.shape[-2]:
        raise ValueError(f"targets have {offsets.numel() - 1} rows but z has {z.shape[-2]}")
    if ids.numel() != counts.numel():
        raise ValueError(f"targets have {ids.numel()} ids but {counts.numel()} counts")
    # A BagTargets checked its offsets when it was built and caches bounds on its ids (one host
    # sync per bag set); duck-typed targets are checked on every call.
    id_bounds = getattr(targets, "id_bounds", None)
    if validate and id_bounds is None and int(offsets[-1]) != ids.numel():
        raise ValueError(f"targets.offsets[-1] = {int(offsets[-1])} but there are {ids.numel()} ids")
    if validate and ids.numel():
        vocab = weight.shape[-2]
        low, high = id_bounds() if id_bounds is not None else (int(ids.min()), int(ids.max()))
        if low < 0 or high >= vocab:
            low, high = int(ids.min()), int(ids.max())  # bounds inherited by a subset may be loose
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            entry = int(torch.nonzero(ids == bad)[0])
            row = int(torch.searchsorted(offsets, torch.tensor(entry, device=offsets.device), right=True)) - 1
            raise ValueError(
                f"target id {bad} (row {row}) is out of range for a vocabulary of {vocab} (weight has V={vocab} rows)"
            )
