"""Triton kernels of the bag-of-tokens cross-entropy (CUDA; CPU tensors under TRITON_INTERPRET=1).

Forward, one program per (row block, layer): stream vocabulary tiles ``W[v0:v0+BV]``, form the
logit tile with ``tl.dot`` over d, keep an online max / sum of exponentials, store one LSE per
row.  The bag's logits come from an indexed dot over its rows of W (``W[t_k] . z_b``), entries in
chunks, summed into their rows with a one-hot reduction: fixed order, no atomics.

Backward, per vocabulary chunk (a slice of V, so [B, Vc] is a fraction of [B, V]): one kernel
recomputes each logit tile from the saved LSE and writes
``dlogits = coef_b * (C_b * softmax - counts)`` (the counts placed by a one-hot product of the
row block's entries, exact in fp32), then torch's matmuls take the two gradient products
(``grad_z += dlogits @ W_chunk``, ``grad_W[chunk] = dlogits^T @ z``), deterministic, at the
library's matmul speed.  No host sync anywhere: loop bounds come from tensors read in-kernel.

Gradient filtering (``filter_eps``), per column of a vocabulary chunk over all B rows, done in
torch on the kernel's dlogits: for a non-target entry ``|dlogit| = |coef_b| C_b softmax``, so a
column is skipped when ``|dlogit| < eps |coef_b| C_b`` in every row and no row's bag holds it.
The kept columns (dlogits and rows of W) are gathered and the two products run on them only.
This costs one host sync per chunk (the number of kept columns) and a [B, Vc] comparison; the
kernel itself is unchanged.

Kernel rules (DESIGN section 5): bf16/fp16 tiles are widened to fp32 before ``tl.dot`` under the
interpreter (``UPCAST``), all reductions are fp32, no libdevice, no block pointers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dispatch import interpreter_enabled

# Bytes of one backward chunk of dlogits, [B, Vc]; at B = 8192 in bf16 that is Vc = 16384 of 128k.
CHUNK_BYTES = 256 * 2**20


@triton.jit
def _logit_tile(z_ptr, w_ptr, b_ptr, rows, row_mask, cols, col_mask, hidden, stride_z, stride_w,
                HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 logits [BLOCK_B, BLOCK_V] of rows x cols; -inf outside the vocabulary."""
    acc = tl.zeros([BLOCK_B, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_mask = ks < hidden
        zt = tl.load(z_ptr + rows[:, None] * stride_z + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        wt = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None], mask=col_mask[None, :] & k_mask[:, None], other=0.0)
        if UPCAST:
            zt = zt.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(zt, wt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return tl.where(col_mask[None, :], acc, float("-inf"))


@triton.jit
def bag_ce_forward_kernel(z_ptr, w_ptr, b_ptr, offsets_ptr, ids_ptr, counts_ptr, row_of_ptr, lse_ptr, target_ptr,
                          num_rows, vocab, hidden, stride_z, stride_w,
                          HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    first_row = tl.program_id(0) * BLOCK_B
    rows = first_row + tl.arange(0, BLOCK_B)
    row_mask = rows < num_rows
    running_max = tl.full([BLOCK_B], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_B], dtype=tl.float32)
    for v0 in range(0, vocab, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_mask = cols < vocab
        logits = _logit_tile(z_ptr, w_ptr, b_ptr, rows, row_mask, cols, col_mask, hidden, stride_z, stride_w,
                             HAS_BIAS, UPCAST, DOT_PRECISION, BLOCK_B, BLOCK_V, BLOCK_D)
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
    tl.store(lse_ptr + rows, running_max + tl.log(running_sum), mask=row_mask)

    # sum_k c_k (W z + b)_{t_k}: the row block's entries are contiguous in the CSR arrays.
    entry_start = tl.load(offsets_ptr + first_row)
    entry_stop = tl.load(offsets_ptr + tl.minimum(first_row + BLOCK_B, num_rows))
    target_sum = tl.zeros([BLOCK_B], dtype=tl.float32)
    for e0 in range(entry_start, entry_stop, BLOCK_N):
        entries = e0 + tl.arange(0, BLOCK_N)
        entry_mask = entries < entry_stop
        entry_row = tl.load(row_of_ptr + entries, mask=entry_mask, other=-1)
        entry_id = tl.load(ids_ptr + entries, mask=entry_mask, other=0)
        dot = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            mask = entry_mask[:, None] & (ks < hidden)[None, :]
            zg = tl.load(z_ptr + entry_row[:, None] * stride_z + ks[None, :], mask=mask, other=0.0).to(tl.float32)
            wg = tl.load(w_ptr + entry_id[:, None] * stride_w + ks[None, :], mask=mask, other=0.0).to(tl.float32)
            dot += tl.sum(zg * wg, axis=1)
        if HAS_BIAS:
            dot += tl.load(b_ptr + entry_id, mask=entry_mask, other=0.0).to(tl.float32)
        weighted = tl.load(counts_ptr + entries, mask=entry_mask, other=0.0) * dot
        owner = entry_row[None, :] == rows[:, None]
        target_sum += tl.sum(tl.where(owner, weighted[None, :], 0.0), axis=1)
    tl.store(target_ptr + rows, target_sum, mask=row_mask)


@triton.jit
def bag_ce_logit_grad_kernel(z_ptr, w_ptr, b_ptr, lse_ptr, coef_ptr, lengths_ptr, offsets_ptr, ids_ptr, counts_ptr,
                             row_of_ptr, dl_ptr, num_rows, vocab, hidden, chunk_start, chunk_stop,
                             stride_z, stride_w, stride_dl,
                             HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                             BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    """dlogits[b, v - chunk_start] = coef_b * (C_b * softmax_bv - count_bv) for v in the chunk."""
    first_row = tl.program_id(0) * BLOCK_B
    rows = first_row + tl.arange(0, BLOCK_B)
    row_mask = rows < num_rows
    cols = (chunk_start + tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    col_mask = cols < chunk_stop

    # counts[b, v] of this tile = onehot(rows)^T @ (counts * onehot(cols)) over the row block's
    # entries; exact in fp32 ("ieee") and free of atomics.  Built before the logit tile so that
    # the one-hot operands are dead while the logits accumulate.
    entry_start = tl.load(offsets_ptr + first_row)
    entry_stop = tl.load(offsets_ptr + tl.minimum(first_row + BLOCK_B, num_rows))
    counts = tl.zeros([BLOCK_B, BLOCK_V], dtype=tl.float32)
    for e0 in range(entry_start, entry_stop, BLOCK_N):
        entries = e0 + tl.arange(0, BLOCK_N)
        entry_mask = entries < entry_stop
        entry_row = tl.load(row_of_ptr + entries, mask=entry_mask, other=-1)
        entry_id = tl.load(ids_ptr + entries, mask=entry_mask, other=-1)
        entry_count = tl.load(counts_ptr + entries, mask=entry_mask, other=0.0)
        in_row = tl.where(rows[:, None] == entry_row[None, :], 1.0, 0.0)
        in_col = tl.where(entry_id[:, None] == cols[None, :], entry_count[:, None], 0.0)
        counts = tl.dot(in_row, in_col, counts, input_precision="ieee")

    logits = _logit_tile(z_ptr, w_ptr, b_ptr, rows, row_mask, cols, col_mask, hidden, stride_z, stride_w,
                         HAS_BIAS, UPCAST, DOT_PRECISION, BLOCK_B, BLOCK_V, BLOCK_D)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    lengths = tl.load(lengths_ptr + rows, mask=row_mask, other=0.0)
    coef = tl.load(coef_ptr + rows, mask=row_mask, other=0.0)
    grad = lengths[:, None] * tl.exp(logits - lse[:, None]) - counts
    grad = coef[:, None] * grad
    out = dl_ptr + rows[:, None] * stride_dl + (cols - chunk_start)[None, :]
    tl.store(out, grad.to(dl_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


# CUDA tile candidates (BLOCK_B, BLOCK_V, BLOCK_D, num_warps, num_stages), tuned once per (vocab,
# hidden); the first is the one aot_specs() compiles.  Each compiles for sm_90a without register
# spills (ptxas figures; every entry compiled as tests/test_aot_compile.py compiles aot_specs()): 8 warps spread the
# fp32 [BLOCK_B, BLOCK_V] accumulator over two warpgroups, and 128 x 128 tiles only fit with a
# 32-wide d step.
GPU_TILES = ((64, 128, 64, 8, 3), (128, 64, 64, 8, 4), (128, 128, 32, 8, 3))
BLOCK_N = 32  # bag entries per step of the indexed dot / one-hot product


def _tile_configs() -> list[triton.Config]:
    # The interpreter runs one program per ~ms: one config with large tiles.  On a GPU, the
    # candidates above.
    if interpreter_enabled() or not torch.cuda.is_available():
        return [triton.Config({"BLOCK_B": 16, "BLOCK_V": 128, "BLOCK_D": 64, "BLOCK_N": BLOCK_N})]
    return [
        triton.Config({"BLOCK_B": bb, "BLOCK_V": bv, "BLOCK_D": bd, "BLOCK_N": BLOCK_N}, num_warps=w, num_stages=s)
        for bb, bv, bd, w, s in GPU_TILES
    ]


_forward = triton.autotune(_tile_configs(), key=["vocab", "hidden", "HAS_BIAS"])(bag_ce_forward_kernel)
_logit_grad = triton.autotune(_tile_configs(), key=["vocab", "hidden", "HAS_BIAS"])(bag_ce_logit_grad_kernel)


def _dot_flags(dtype: torch.dtype) -> tuple[bool, str]:
    # Under the interpreter a bf16/fp16 tl.dot is silently wrong: widen first.  On a GPU keep the
    # tensor-core dtype; fp32 inputs get full-precision dots, as torch's fp32 matmul does.
    return (interpreter_enabled() and dtype != torch.float32), ("ieee" if dtype == torch.float32 else "tf32")


def forward(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bags):
    """LSE and target sums, fp32 [L, B] each, of z [L, B, d], weight [L, V, d], bias [L, V] | None."""
    z, weight = z.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    num_layers, num_rows, hidden = z.shape
    vocab = weight.shape[1]
    lse = torch.empty(num_layers, num_rows, dtype=torch.float32, device=z.device)
    target_sum = torch.empty_like(lse)
    upcast, precision = _dot_flags(z.dtype)
    grid = lambda meta: (triton.cdiv(num_rows, meta["BLOCK_B"]),)  # noqa: E731
    for layer in range(num_layers):
        _forward[grid](
            z[layer], weight[layer], weight[layer] if bias is None else bias[layer],
            bags.offsets, bags.ids, bags.counts, bags.row_of, lse[layer], target_sum[layer],
            num_rows, vocab, hidden, z.stride(1), weight.stride(1),
            HAS_BIAS=bias is not None, UPCAST=upcast, DOT_PRECISION=precision,
        )
    return lse, target_sum


def backward(z, weight, bias, bags, lse, coef, needs, filter_eps=None):
    """Gradients (z fp32 [L, B, d], weight [L, V, d] in its dtype, bias fp32 [L, V]); None where not needed."""
    z, weight = z.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    coef = coef.float().expand(lse.shape).contiguous()
    num_layers, num_rows, hidden = z.shape
    vocab = weight.shape[1]
    compute_dtype = torch.promote_types(z.dtype, weight.dtype)
    chunk = max(128, min(vocab, CHUNK_BYTES // (max(num_rows, 1) * compute_dtype.itemsize)) // 128 * 128)
    dlogits = torch.empty(num_rows, min(chunk, vocab), dtype=compute_dtype, device=z.device)
    grad_z = torch.zeros(num_layers, num_rows, hidden, dtype=torch.float32, device=z.device) if needs[0] else None
    grad_w = torch.empty_like(weight) if needs[1] else None
    grad_b = torch.empty(num_layers, vocab, dtype=torch.float32, device=z.device) if needs[2] else None
    upcast, precision = _dot_flags(z.dtype)
    if filter_eps is not None:
        is_target = torch.zeros(vocab, dtype=torch.bool, device=z.device)
        is_target[bags.ids] = True
        # Per-row threshold on |dlogit|; rows with zero dlogits (empty bag, zero coef) decide nothing.
        row_scale = (coef * bags.lengths).abs()
        thresholds = torch.where(row_scale > 0, filter_eps * row_scale, torch.inf).to(compute_dtype)
    for layer in range(num_layers):
        z_layer = z[layer].to(compute_dtype)
        for start in range(0, vocab, chunk):
            stop = min(start + chunk, vocab)
            dl = dlogits[:, : stop - start]
            grid = lambda meta: (triton.cdiv(num_rows, meta["BLOCK_B"]), triton.cdiv(stop - start, meta["BLOCK_V"]))  # noqa: E731
            _logit_grad[grid](
                z[layer], weight[layer], weight[layer] if bias is None else bias[layer],
                lse[layer], coef[layer], bags.lengths, bags.offsets, bags.ids, bags.counts, bags.row_of, dl,
                num_rows, vocab, hidden, start, stop, z.stride(1), weight.stride(1), dl.stride(0),
                HAS_BIAS=bias is not None, UPCAST=upcast, DOT_PRECISION=precision,
            )
            kept = None
            if filter_eps is not None:
                keep = (dl.abs() >= thresholds[layer, :, None]).any(0) | is_target[start:stop]
                kept = keep.nonzero().squeeze(1)
                if kept.numel() == stop - start:
                    kept = None
            if kept is None:
                if grad_z is not None:
                    grad_z[layer] += (dl @ weight[layer, start:stop].to(compute_dtype)).float()
                if grad_w is not None:
                    grad_w[layer, start:stop] = dl.t() @ z_layer
            else:
                kept_dl = dl.index_select(1, kept)
                if grad_z is not None:
                    kept_w = weight[layer, start:stop].index_select(0, kept).to(compute_dtype)
                    grad_z[layer] += (kept_dl @ kept_w).float()
                if grad_w is not None:
                    grad_w[layer, start:stop] = 0
                    grad_w[layer, start:stop].index_copy_(0, kept, (kept_dl.t() @ z_layer).to(grad_w.dtype))
            if grad_b is not None:
                grad_b[layer, start:stop] = dl.float().sum(0)
    return grad_z, grad_w, grad_b


def aot_specs() -> list[tuple[str, object, dict[str, str], dict[str, object]]]:
    """(name, jit function, signature, constexprs) of each kernel, bf16 with GPU_TILES[0]."""
    return [
        (name, fn, signature, {**constexprs, **tile_constexprs(GPU_TILES[0])})
        for name, fn, signature, constexprs in _specs_without_tile()
    ]


def tile_constexprs(tile: tuple[int, int, int, int, int]) -> dict[str, int]:
    """Block sizes and compile options of one GPU_TILES entry, in aot_specs()' constexpr form."""
    block_b, block_v, block_d, num_warps, num_stages = tile
    return {"BLOCK_B": block_b, "BLOCK_V": block_v, "BLOCK_D": block_d, "BLOCK_N": BLOCK_N,
            "num_warps": num_warps, "num_stages": num_stages}


def _specs_without_tile():
    """aot_specs() before the tile: bf16 signatures and the GPU flags."""
    flags = {"HAS_BIAS": True, "UPCAST": False, "DOT_PRECISION": "tf32"}
    forward_sig = {
        "z_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "offsets_ptr": "*i64", "ids_ptr": "*i64",
        "counts_ptr": "*fp32", "row_of_ptr": "*i64", "lse_ptr": "*fp32", "target_ptr": "*fp32",
        "num_rows": "i32", "vocab": "i32", "hidden": "i32", "stride_z": "i32", "stride_w": "i32",
    }
    grad_sig = {
        "z_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "lse_ptr": "*fp32", "coef_ptr": "*fp32",
        "lengths_ptr": "*fp32", "offsets_ptr": "*i64", "ids_ptr": "*i64", "counts_ptr": "*fp32",
        "row_of_ptr": "*i64", "dl_ptr": "*bf16", "num_rows": "i32", "vocab": "i32", "hidden": "i32",
        "chunk_start": "i32", "chunk_stop": "i32", "stride_z": "i32", "stride_w": "i32", "stride_dl": "i32",
    }
    return [
        ("bag_ce_forward", bag_ce_forward_kernel, forward_sig, flags),
        ("bag_ce_logit_grad", bag_ce_logit_grad_kernel, grad_sig, flags),
    ]
