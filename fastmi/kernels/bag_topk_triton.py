"""Triton path of :func:`fastmi.kernels.bag_topk`: streamed logit tiles, online LSE, running top-k.

One program owns ``BLOCK_B`` rows and one contiguous slice of the vocabulary's tiles.  For each
[BLOCK_B, BLOCK_V] logit tile (``tl.dot`` over d) it updates a running max / sum of exponentials
and merges the tile into a running (unordered) top-``K`` kept in registers.  Values and ids travel together
as one int64 sort key: the high 32 bits are the fp32 logit mapped to an order-preserving integer,
the low 32 bits ``MAX_ID - id``, so a larger key means a larger logit or, on a tie, a smaller id.
Keys are unique, which makes every selection here (the in-kernel merge, ``torch.topk`` over the
splits) exact and deterministic.

Programs along the vocabulary write partial (keys, max, sum) per row; a small torch step merges
the splits (two passes, no atomics).  Splitting V keeps all SMs busy when B is small.

``K`` is a power-of-two bucket <= ``MAX_K``; larger k runs the chunked torch path instead (see
:mod:`fastmi.kernels.bag_topk`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastmi.kernels._dispatch import interpreter_enabled

MAX_K = 64
MAX_ID = 0x7FFFFFFF
# below every real key (the lowest is -inf's: about -2**62.9); not INT64_MIN, whose literal overflows
_NO_KEY = tl.constexpr(-(2**63 - 1))


@triton.jit
def _sort_keys(logits, cols):
    # -0.0 and +0.0 compare equal: give them one bit pattern so the id decides their tie
    logits = tl.where(logits == 0.0, 0.0, logits)
    bits = logits.to(tl.int32, bitcast=True)
    # negative floats order backwards as integers: flip their magnitude bits
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (ordered.to(tl.int64) << 32) | (0x7FFFFFFF - cols).to(tl.int64)


@triton.jit
def _merge_top(best, candidates):
    # Insert the tile's best keys into the unordered running set, one per row and round, while
    # some row's best candidate beats its worst kept key.  After the first tiles few candidates
    # qualify, so this costs one or two rounds per tile; tl.topk's bitonic network would cost
    # log^2 rounds on every tile and is unusably slow under the interpreter.
    top = tl.max(candidates, axis=1)
    worst = tl.min(best, axis=1)
    while tl.max((top > worst).to(tl.int32), axis=0) > 0:
        take = top > worst
        best = tl.where(take[:, None] & (best == worst[:, None]), top[:, None], best)
        candidates = tl.where(candidates == top[:, None], _NO_KEY, candidates)
        top = tl.max(candidates, axis=1)
        worst = tl.min(best, axis=1)
    return best


@triton.jit
def _bag_topk_kernel(
    z_ptr,
    w_ptr,
    b_ptr,
    keys_ptr,
    max_ptr,
    sum_ptr,
    B,
    V,
    D,
    tiles_per_split,
    stride_zl,
    stride_zb,
    stride_wl,
    stride_wv,
    stride_bl,
    HAS_BIAS: tl.constexpr,
    K: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    layer = tl.program_id(2).to(tl.int64)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    z_base = z_ptr + layer * stride_zl + rows.to(tl.int64)[:, None] * stride_zb
    w_base = w_ptr + layer * stride_wl

    running_max = tl.full([BLOCK_B], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_B], tl.float32)
    # distinct placeholders, so that replacing "the worst kept key" replaces exactly one entry
    best = tl.zeros([BLOCK_B, K], tl.int64) + _NO_KEY + tl.arange(0, K)[None, :]
    v_begin = split * tiles_per_split * BLOCK_V
    v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        w_rows = w_base + cols.to(tl.int64)[:, None] * stride_wv
        acc = tl.zeros([BLOCK_B, BLOCK_V], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < D
            zt = tl.load(z_base + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            wt = tl.load(w_rows + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:  # the interpreter's bf16 tl.dot is wrong: multiply in fp32 there
                zt = zt.to(tl.float32)
                wt = wt.to(tl.float32)
            acc = tl.dot(zt, tl.trans(wt), acc, input_precision=INPUT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + layer * stride_bl + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        logits = tl.where(col_ok[None, :], acc, float("-inf"))

        tile_max = tl.max(logits, axis=1)
        new_max = tl.maximum(running_max, tile_max)
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max

        candidates = tl.where(col_ok[None, :], _sort_keys(logits, cols[None, :]), _NO_KEY)
        best = _merge_top(best, candidates)

    out_rows = (layer * B + rows).to(tl.int64) * NUM_SPLITS + split
    tl.store(max_ptr + out_rows, running_max, mask=row_ok)
    tl.store(sum_ptr + out_rows, running_sum, mask=row_ok)
    ks = tl.arange(0, K)
    tl.store(keys_ptr + out_rows[:, None] * K + ks[None, :], best, mask=row_ok[:, None])


def _block_sizes(k_bucket: int, interpreted: bool | None = None, itemsize: int = 2) -> dict:
    if interpreter_enabled() if interpreted is None else interpreted:
        # one interpreted program costs ~1 ms whatever its size: few, large programs
        return dict(BLOCK_B=32, BLOCK_V=64, BLOCK_D=64, num_warps=4, num_stages=1)
    # the [BLOCK_B, K] int64 running set lives in registers: halve the rows for large K or fp32
    # operands, and the d step for fp32 (no spills: tests/test_aot_compile.py)
    return dict(
        BLOCK_B=64 if k_bucket <= 16 and itemsize == 2 else 32,
        BLOCK_V=128,
        BLOCK_D=64 if itemsize == 2 else 32,
        num_warps=8,
        num_stages=3,
    )


def _num_splits(row_blocks: int, tiles: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, triton.cdiv(2 * sms, row_blocks)))


@torch.no_grad()
def bag_topk_triton(
    z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int, num_splits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-batched contract: z [L, B, d], weight [L, V, d], bias [L, V] or None; k <= MAX_K."""
    num_layers, num_rows, dim = z.shape
    vocab = weight.shape[1]
    z = z.to(weight.dtype)  # tl.dot takes one input dtype (bag_topk has already made them equal)
    z = z if z.stride(-1) == 1 else z.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    k_bucket = triton.next_power_of_2(k)
    blocks = _block_sizes(k_bucket, itemsize=weight.element_size())
    row_blocks = triton.cdiv(num_rows, blocks["BLOCK_B"])
    tiles = triton.cdiv(vocab, blocks["BLOCK_V"])
    splits = num_splits or _num_splits(row_blocks * num_layers, tiles, z.device)
    tiles_per_split = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, tiles_per_split)  # no split without a tile

    keys = torch.empty(num_layers, num_rows, splits, k_bucket, dtype=torch.int64, device=z.device)
    maxes = torch.empty(num_layers, num_rows, splits, dtype=torch.float32, device=z.device)
    sums = torch.empty_like(maxes)
    fp32 = z.dtype == torch.float32 and weight.dtype == torch.float32
    _bag_topk_kernel[(row_blocks, splits, num_layers)](
        z,
        weight,
        bias if bias is not None else z,
        keys,
        maxes,
        sums,
        num_rows,
        vocab,
        dim,
        tiles_per_split,
        z.stride(0),
        z.stride(1),
        weight.stride(0),
        weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        HAS_BIAS=bias is not None,
        K=k_bucket,
        NUM_SPLITS=splits,
        UPCAST=interpreter_enabled(),
        INPUT_PRECISION="ieee" if fp32 else "tf32",
        **blocks,
    )
    # merge the splits: keys are unique, so topk over them is exact
    best = keys.view(num_layers, num_rows, splits * k_bucket).topk(k, dim=-1).values
    ids = MAX_ID - (best & 0xFFFFFFFF)
    top = maxes.amax(-1, keepdim=True)
    lse = top.squeeze(-1) + (sums * torch.exp(maxes - top)).sum(-1).log()
    return ids, lse


def aot_specs() -> list:
    """GPU configurations for the ahead-of-time compile test (tests/test_aot_compile.py).

    k = 1, 5 and 64 (buckets 1, 8, 64: both block sizes), fp32 ("ieee" dots) and bf16 operands,
    and the mixed case: bf16 operands with an fp32 bias.
    """
    specs = []
    for k in (1, 5, MAX_K):
        bucket = triton.next_power_of_2(k)
        for operands, bias, precision in (("fp32", "fp32", "ieee"), ("bf16", "bf16", "tf32"), ("bf16", "fp32", "tf32")):
            signature = {
                "z_ptr": f"*{operands}",
                "w_ptr": f"*{operands}",
                "b_ptr": f"*{bias}",
                "keys_ptr": "*i64",
                "max_ptr": "*fp32",
                "sum_ptr": "*fp32",
                "B": "i32",
                "V": "i32",
                "D": "i32",
                "tiles_per_split": "i32",
                "stride_zl": "i64",
                "stride_zb": "i32",
                "stride_wl": "i64",
                "stride_wv": "i32",
                "stride_bl": "i32",
            }
            constexprs = dict(
                HAS_BIAS=True,
                K=bucket,
                NUM_SPLITS=2,
                UPCAST=False,
                INPUT_PRECISION=precision,
                _not_divisible=("tiles_per_split",),
                **_block_sizes(bucket, interpreted=False, itemsize=4 if operands == "fp32" else 2),
            )
            specs.append((f"bag_topk_{operands}_b{bias}_k{k}", _bag_topk_kernel, signature, constexprs))
    return specs
