"""Arithmetic precision of the probe's training loss (``TrainConfig.precision``).

* ``"fp32"``: fp32 operands, fp32 products ("ieee" dots, torch's default matmul precision).
* ``"tf32"``: fp32 operands, TF32 tensor-core products on a GPU (10-bit mantissas in, fp32
  accumulation).  On a CPU the same as fp32.
* ``"bf16"``: z and W rounded to bf16 for the loss, fp32 accumulation; the master weights, Adam's
  moments and the updates stay fp32 (the cast is inside autograd, so W's gradient arrives in fp32).

* ``"auto"`` (the default): ``"bf16"`` on a GPU, ``"fp32"`` on a CPU.  The rule is "the fastest
  precision that keeps the bounds within 0.01 bit of fp32 on the demo caches": bf16 moved them by
  at most a few 1e-4 bits there (docs/performance.md), and it is the fastest on tensor cores; on a
  CPU the products run in fp32 either way, so rounding to bf16 first only costs time.

Only the training loss is affected: validation (early stopping) and held-out scoring run on the
fp32 weights with fp32 products.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fastmi.probe.checks import PRECISIONS


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision that runs: "auto" resolved for ``device`` (bf16 on CUDA, fp32 elsewhere)."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def loss_operands(precision: str, z: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, W) as the loss should see them: bf16 copies for "bf16", the fp32 tensors otherwise."""
    if resolve_precision(precision, z.device) == "bf16":
        return z.to(torch.bfloat16), weight.to(torch.bfloat16)
    return z, weight


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """torch's fp32 matmul precision for the block: "high" (TF32) for "tf32", "highest" otherwise."""
    check_precision(precision)  # "auto" never means TF32
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
