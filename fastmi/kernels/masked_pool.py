"""Public :func:`masked_pool`: pool [B, T, d] hidden states over the unmasked positions."""

from __future__ import annotations

import torch

from fastmi.kernels._dispatch import choose_backend
from fastmi.kernels.masked_pool_cpu import masked_pool_torch
from fastmi.kernels.reference import POOL_MODES, masked_pool_reference


def _check(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> None:
    if mode not in POOL_MODES:
        raise ValueError(f"pooling mode must be one of {POOL_MODES}, got {mode!r}")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, d], got shape {tuple(hidden.shape)}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got {hidden.dtype}")
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"mask must be [B, T] = {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")
    if mask.device != hidden.device:
        raise ValueError(f"mask is on {mask.device} but hidden is on {hidden.device}")


def masked_pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool ``hidden`` [B, T, d] over the positions where ``mask`` [B, T] is nonzero -> fp32 [B, d].

        mode: "mean", "max", "first" or "last" (the first / last unmasked position, whatever the
        padding side: left, right, or holes).  A row with no unmasked position pools to zeros.
        Accepts fp32 / bf16 / fp16 hidden; accumulates in fp32.  Never syncs the host, so forward
        hooks can call it on every block's output.  The Triton kernel has no backward: when hidden
    requires a gradient (fine-tuning), the differentiable torch path runs instead, on any device.
    """
    _check(hidden, mask, mode)
    keep = mask if mask.dtype == torch.bool else mask != 0
    if hidden.shape[1] == 0:  # no positions at all: every row is empty
        return torch.zeros(hidden.shape[0], hidden.shape[2], dtype=torch.float32, device=hidden.device)
    which = choose_backend(hidden)
    if which == "reference":
        return masked_pool_reference(hidden, keep, mode)
    wants_grad = hidden.requires_grad and torch.is_grad_enabled()
    if which == "triton" and not wants_grad and hidden.numel() > 0:
        from fastmi.kernels.masked_pool_triton import masked_pool_triton  # triton imports only where it runs

        return masked_pool_triton(hidden if hidden.stride(-1) == 1 else hidden.contiguous(), keep, mode)
    return masked_pool_torch(hidden, keep, mode)
