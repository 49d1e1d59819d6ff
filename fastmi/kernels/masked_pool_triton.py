"""Triton path of :func:`fastmi.kernels.masked_pool`: one program per (sentence, slice of d).

Each program walks T in blocks.  mean / max load hidden only where the mask is set (padding is
never read, whatever side it is on) and accumulate in fp32.  first / last scan the mask row for
the position, then load that single [BLOCK_D] row.  No host sync, no atomics: safe inside
forward hooks, CUDA graphs and torch.compile regions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastmi.kernels._dispatch import interpreter_enabled

MODES = {"mean": 0, "max": 1, "first": 2, "last": 3}


@triton.jit
def _masked_pool_kernel(
    h_ptr,
    m_ptr,
    out_ptr,
    T,
    D,
    stride_hb,
    stride_ht,
    stride_mb,
    stride_mt,
    stride_ob,
    MODE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    h_row = h_ptr + row * stride_hb
    m_row = m_ptr + row * stride_mb
    if MODE <= 1:  # mean, max
        if MODE == 0:
            acc = tl.zeros([BLOCK_D], tl.float32)
        else:
            acc = tl.full([BLOCK_D], float("-inf"), tl.float32)
        count = tl.zeros([BLOCK_T], tl.int32)
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            keep = tl.load(m_row + ts * stride_mt, mask=ts < T, other=0) != 0
            h = tl.load(
                h_row + ts.to(tl.int64)[:, None] * stride_ht + cols[None, :],
                mask=keep[:, None] & col_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            count += keep.to(tl.int32)
            if MODE == 0:
                acc += tl.sum(h, axis=0)
            else:
                acc = tl.maximum(acc, tl.max(tl.where(keep[:, None], h, float("-inf")), axis=0))
        n = tl.sum(count, axis=0)
        if MODE == 0:
            out = acc / tl.maximum(n, 1).to(tl.float32)
        else:
            out = tl.where(n > 0, acc, 0.0)
    else:  # first, last
        if MODE == 2:
            found = tl.full([BLOCK_T], 2147483647, tl.int32)
        else:
            found = tl.full([BLOCK_T], -1, tl.int32)
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            keep = tl.load(m_row + ts * stride_mt, mask=ts < T, other=0) != 0
            if MODE == 2:
                found = tl.minimum(found, tl.where(keep, ts, 2147483647))
            else:
                found = tl.maximum(found, tl.where(keep, ts, -1))
        if MODE == 2:
            position = tl.min(found, axis=0)
        else:
            position = tl.max(found, axis=0)
        valid = (position >= 0) & (position < T)
        # an empty row reads position 0 and is zeroed below (scalar-and-vector load masks are
        # not supported by the interpreter)
        position = tl.where(valid, position, 0)
        out = tl.load(h_row + position.to(tl.int64) * stride_ht + cols, mask=col_ok, other=0.0).to(tl.float32)
        out = tl.where(valid, out, 0.0)
    tl.store(out_ptr + row * stride_ob + cols, out, mask=col_ok)


def _block_sizes(length: int, dim: int, interpreted: bool | None = None) -> dict:
    if (
        interpreter_enabled() if interpreted is None else interpreted
    ):  # few, large programs: one interpreted program costs ~1 ms
        return dict(BLOCK_T=min(64, triton.next_power_of_2(length)), BLOCK_D=min(128, triton.next_power_of_2(dim)))
    return dict(BLOCK_T=32, BLOCK_D=128, num_warps=4)


def masked_pool_triton(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden [B, T, d] with unit stride in d, mask [B, T] bool -> fp32 [B, d]."""
    rows, length, dim = hidden.shape
    out = torch.empty(rows, dim, dtype=torch.float32, device=hidden.device)
    blocks = _block_sizes(length, dim)
    grid = (rows, triton.cdiv(dim, blocks["BLOCK_D"]))
    flags = mask.view(torch.uint8)  # same bytes as bool; Triton's *i1 loads are avoided
    _masked_pool_kernel[grid](
        hidden,
        flags,
        out,
        length,
        dim,
        hidden.stride(0),
        hidden.stride(1),
        flags.stride(0),
        flags.stride(1),
        out.stride(0),
        MODE=MODES[mode],
        **blocks,
    )
    return out


def aot_specs() -> list:
    """Realistic GPU configurations for the ahead-of-time compile test (tests/test_aot_compile.py)."""
    gpu = _block_sizes(2048, 4096, interpreted=False)
    specs = []
    for dtype in ("bf16", "fp32"):
        signature = {
            "h_ptr": f"*{dtype}",
            "m_ptr": "*u8",
            "out_ptr": "*fp32",
            "T": "i32",
            "D": "i32",
            "stride_hb": "i64",
            "stride_ht": "i32",
            "stride_mb": "i32",
            "stride_mt": "i32",
            "stride_ob": "i32",
        }
        # T is a padded batch length: not a multiple of 16 in general
        specs += [
            (
                f"masked_pool_{mode}_{dtype}",
                _masked_pool_kernel,
                signature,
                dict(MODE=code, _not_divisible=("T",), **gpu),
            )
            for mode, code in MODES.items()
        ]
    return specs
