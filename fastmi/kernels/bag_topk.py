"""Public :func:`bag_topk`: the k best ids and the log-sum-exp of ``W z + b``, without [B, V] logits."""

from __future__ import annotations

import torch

from fastmi.kernels._dispatch import choose_backend
from fastmi.kernels._dtypes import compute_dtype
from fastmi.kernels.bag_topk_cpu import bag_topk_cpu
from fastmi.kernels.reference import bag_topk_reference


def _check(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> None:
    if z.dim() not in (2, 3) or weight.dim() != z.dim():
        raise ValueError(
            f"bag_topk takes z [B, d] with weight [V, d], or z [L, B, d] with weight [L, V, d]; "
            f"got z {tuple(z.shape)} and weight {tuple(weight.shape)}"
        )
    if z.shape[-1] != weight.shape[-1]:
        raise ValueError(f"z has d = {z.shape[-1]} but weight has d = {weight.shape[-1]}")
    if z.dim() == 3 and z.shape[0] != weight.shape[0]:
        raise ValueError(f"z has {z.shape[0]} layers but weight has {weight.shape[0]}")
    vocab = weight.shape[-2]
    if bias is not None and tuple(bias.shape) != tuple(weight.shape[:-1]):
        raise ValueError(f"bias must have shape {tuple(weight.shape[:-1])}, got {tuple(bias.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int in 1..V = 1..{vocab}, got {k!r}")
    for name, t in (("z", z), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t is not None and t.device != z.device:
            raise ValueError(f"{name} is on {t.device} but z is on {z.device}")


@torch.no_grad()
def bag_topk(
    z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids and LSE of the logits ``z @ weight.T + bias``, row by row, never materialised.

    Args:
        z: [B, d], or layer-batched [L, B, d].
        weight: [V, d], or [L, V, d].
        bias: [V], [L, V] or None.
        k: how many ids per row, 1 <= k <= V (k > V is an error, not a silently narrower result).

    Returns:
        ids [..., B, k] int64, best first; equal logits are ordered by the smaller id.
        lse [..., B] fp32, log-sum-exp over the whole vocabulary (nats).

    z and W may differ in dtype: both are rounded to :func:`~fastmi.kernels._dtypes.compute_dtype`
    (the weight's, or autocast's), and the products accumulate in fp32.  No autograd.  On CUDA the Triton
    kernel runs for
    k <= 64; larger k runs the chunked torch path on the GPU (one [rows, V] block at a time, and a
    host sync when ties at the k-th value need repair).
    """
    _check(z, weight, bias, k)
    dtype = compute_dtype(z, weight)  # one operand dtype for the products (fp32 accumulation)
    z, weight = z.to(dtype), weight.to(dtype)
    which = choose_backend(z)
    if which == "reference":
        return bag_topk_reference(z, weight, bias, k)
    if which == "triton":
        from fastmi.kernels.bag_topk_triton import MAX_K, bag_topk_triton  # triton imports only where it runs

        if k <= MAX_K:
            batched = z.dim() == 3
            ids, lse = bag_topk_triton(
                z if batched else z.unsqueeze(0),
                weight if batched else weight.unsqueeze(0),
                None if bias is None else (bias if batched else bias.unsqueeze(0)),
                k,
            )
            return (ids, lse) if batched else (ids[0], lse[0])
    if z.dim() == 2:
        return bag_topk_cpu(z, weight, bias, k)
    results = [bag_topk_cpu(z[i], weight[i], None if bias is None else bias[i], k) for i in range(z.shape[0])]
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])
