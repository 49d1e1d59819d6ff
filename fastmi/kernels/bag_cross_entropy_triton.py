"""Triton kernels of the bag-of-tokens cross-entropy (CUDA; CPU tensors under TRITON_INTERPRET=1).

Three jobs, none of which allocates [B, V]:

* **LSE, split over V** (:func:`forward`): one program per (row block, vocabulary split, layer)
  streams its split's tiles ``W[v0:v0+BV]``, forms each logit tile with ``tl.dot`` over d, and
  keeps an online max / sum of exponentials; a torch step merges the splits' partials (fixed
  order, no atomics).  Layers and splits are grid axes, so a 256-row call of 81 layers fills the
  machine, and no Python loop runs over layers.
* **Bag logits** (:func:`target_sums`): one program per (row, layer) takes the indexed dot
  ``W[t_k] . z_b`` over its bag and sums ``c_k * logit_k`` in a fixed order.
* **Logit gradients** (recompute path, non-scalar reductions): per vocabulary chunk, a kernel
  writes ``coef_b * C_b * softmax`` from the saved LSE, a second subtracts ``coef_b * c_k`` at the
  bag's entries (each (row, id) pair is unique: a plain load-modify-store, deterministic), then
  torch's matmuls take the two gradient products.

A scalar loss does not use the recompute path: :mod:`fastmi.kernels.bag_cross_entropy` runs the
row-block sweep of :mod:`~fastmi.kernels.bag_cross_entropy_cpu`, with :func:`logits_into` (fp32
logits of bf16/fp32 inputs, tensor cores) as its logit product, so forward + backward execute
6*B*d*V flops instead of 8.

Tiles are fixed per (dtype, row bucket) (:func:`gpu_tile`), never picked by timing: BLOCK_D and
BLOCK_V set the order of the fp32 reductions, so a timing-picked tile could give different bits
in two processes.  Kernel rules (DESIGN section 5): bf16/fp16 tiles are widened to fp32 before
``tl.dot`` under the interpreter (``UPCAST``), all reductions are fp32, no libdevice, no block
pointers.  z and W reach the kernels in one dtype (the caller casts: docs/performance.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastmi.kernels._dispatch import interpreter_enabled

# Bytes of one backward chunk of dlogits, [B, Vc]; at B = 8192 in bf16 that is Vc = 16384 of 128k.
CHUNK_BYTES = 256 * 2**20
BLOCK_N = 16  # bag entries per step of the indexed dot
TARGET_BLOCK_D = 128  # d per step of the indexed dot


@triton.jit
def _logit_tile(
    z_base,
    w_base,
    b_base,
    rows,
    row_mask,
    cols,
    col_mask,
    hidden,
    stride_zb,
    stride_wv,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """fp32 logits [BLOCK_B, BLOCK_V] of rows x cols; -inf outside the vocabulary."""
    acc = tl.zeros([BLOCK_B, BLOCK_V], dtype=tl.float32)
    z_rows = z_base + rows.to(tl.int64)[:, None] * stride_zb
    w_cols = w_base + cols.to(tl.int64)[None, :] * stride_wv
    for k0 in range(0, hidden, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_mask = ks < hidden
        zt = tl.load(z_rows + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        wt = tl.load(w_cols + ks[:, None], mask=col_mask[None, :] & k_mask[:, None], other=0.0)
        if UPCAST:
            zt = zt.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(zt, wt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_base + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return tl.where(col_mask[None, :], acc, float("-inf"))


@triton.jit
def bag_ce_lse_partial_kernel(
    z_ptr,
    w_ptr,
    b_ptr,
    max_ptr,
    sum_ptr,
    num_rows,
    vocab,
    hidden,
    tiles_per_split,
    stride_zl,
    stride_zb,
    stride_wl,
    stride_wv,
    stride_bl,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Max and sum of exp(logit - max) of each row over one vocabulary split: [L, B, NUM_SPLITS]."""
    split = tl.program_id(1)
    layer = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < num_rows
    z_base = z_ptr + layer * stride_zl
    w_base = w_ptr + layer * stride_wl
    b_base = b_ptr + layer * stride_bl
    running_max = tl.full([BLOCK_B], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_B], dtype=tl.float32)
    v_begin = split * tiles_per_split * BLOCK_V
    v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, vocab)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < vocab
        logits = _logit_tile(
            z_base,
            w_base,
            b_base,
            rows,
            row_mask,
            cols,
            col_mask,
            hidden,
            stride_zb,
            stride_wv,
            HAS_BIAS,
            UPCAST,
            DOT_PRECISION,
            BLOCK_B,
            BLOCK_V,
            BLOCK_D,
        )
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
    out = (layer * num_rows + rows) * NUM_SPLITS + split
    tl.store(max_ptr + out, running_max, mask=row_mask)
    tl.store(sum_ptr + out, running_sum, mask=row_mask)


@triton.jit
def bag_ce_target_kernel(
    z_ptr,
    w_ptr,
    b_ptr,
    offsets_ptr,
    ids_ptr,
    counts_ptr,
    target_ptr,
    num_rows,
    hidden,
    stride_zl,
    stride_zb,
    stride_wl,
    stride_wv,
    stride_bl,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """sum_k c_k (W z + b)_{t_k} of one row of one layer, fp32, entries in CSR order."""
    row = tl.program_id(0)
    layer = tl.program_id(1).to(tl.int64)
    z_row = z_ptr + layer * stride_zl + row.to(tl.int64) * stride_zb
    w_base = w_ptr + layer * stride_wl
    entry_start = tl.load(offsets_ptr + row)
    entry_stop = tl.load(offsets_ptr + row + 1)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for e0 in range(entry_start, entry_stop, BLOCK_N):
        entries = e0 + tl.arange(0, BLOCK_N)
        entry_mask = entries < entry_stop
        entry_id = tl.load(ids_ptr + entries, mask=entry_mask, other=0)
        dot = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            k_mask = ks < hidden
            zk = tl.load(z_row + ks, mask=k_mask, other=0.0).to(tl.float32)
            wk = tl.load(
                w_base + entry_id[:, None] * stride_wv + ks[None, :],
                mask=entry_mask[:, None] & k_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            dot += tl.sum(wk * zk[None, :], axis=1)
        if HAS_BIAS:
            dot += tl.load(b_ptr + layer * stride_bl + entry_id, mask=entry_mask, other=0.0).to(tl.float32)
        total += tl.load(counts_ptr + entries, mask=entry_mask, other=0.0) * dot
    tl.store(target_ptr + layer * num_rows + row, tl.sum(total, axis=0))


@triton.jit
def bag_ce_logits_kernel(
    z_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    num_rows,
    vocab,
    hidden,
    stride_zb,
    stride_wv,
    stride_out,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """fp32 logits [rows, V] of one layer into ``out`` (a row block of the fused sweep)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < num_rows
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < vocab
    logits = _logit_tile(
        z_ptr,
        w_ptr,
        b_ptr,
        rows,
        row_mask,
        cols,
        col_mask,
        hidden,
        stride_zb,
        stride_wv,
        HAS_BIAS,
        UPCAST,
        DOT_PRECISION,
        BLOCK_B,
        BLOCK_V,
        BLOCK_D,
    )
    out = out_ptr + rows.to(tl.int64)[:, None] * stride_out + cols[None, :]
    tl.store(out, logits, mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def bag_ce_logit_grad_kernel(
    z_ptr,
    w_ptr,
    b_ptr,
    lse_ptr,
    coef_ptr,
    lengths_ptr,
    dl_ptr,
    num_rows,
    vocab,
    hidden,
    chunk_start,
    chunk_stop,
    stride_zb,
    stride_wv,
    stride_dl,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dlogits[b, v - chunk_start] = coef_b * C_b * softmax_bv for v in the chunk (counts: next kernel)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < num_rows
    cols = chunk_start + tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < chunk_stop
    logits = _logit_tile(
        z_ptr,
        w_ptr,
        b_ptr,
        rows,
        row_mask,
        cols,
        col_mask,
        hidden,
        stride_zb,
        stride_wv,
        HAS_BIAS,
        UPCAST,
        DOT_PRECISION,
        BLOCK_B,
        BLOCK_V,
        BLOCK_D,
    )
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    scale = tl.load(coef_ptr + rows, mask=row_mask, other=0.0) * tl.load(lengths_ptr + rows, mask=row_mask, other=0.0)
    grad = scale[:, None] * tl.exp(logits - lse[:, None])
    out = dl_ptr + rows.to(tl.int64)[:, None] * stride_dl + (cols - chunk_start)[None, :]
    tl.store(out, grad.to(dl_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def bag_ce_count_scatter_kernel(
    dl_ptr, row_of_ptr, ids_ptr, counts_ptr, coef_ptr, nnz, chunk_start, chunk_stop, stride_dl, BLOCK_N: tl.constexpr
):
    """dlogits[row, id - chunk_start] -= coef_row * count for the bag entries whose id is in the chunk.

    The (row, id) pairs of the bags are unique, so every element is written by one entry at most:
    no atomics, the same bits in any order.
    """
    entries = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    entry_mask = entries < nnz
    ids = tl.load(ids_ptr + entries, mask=entry_mask, other=-1)
    hit = entry_mask & (ids >= chunk_start) & (ids < chunk_stop)
    rows = tl.load(row_of_ptr + entries, mask=hit, other=0)
    where = dl_ptr + rows * stride_dl + (ids - chunk_start)
    value = tl.load(where, mask=hit, other=0.0).to(tl.float32)
    delta = tl.load(coef_ptr + rows, mask=hit, other=0.0) * tl.load(counts_ptr + entries, mask=hit, other=0.0)
    tl.store(where, (value - delta).to(dl_ptr.dtype.element_ty), mask=hit)


# ---- tiles: fixed per (dtype, row bucket), so a shape always reduces in the same order --------------
# (BLOCK_B, BLOCK_V, BLOCK_D, num_warps, num_stages).  Each compiles for sm_90a without register
# spills under the divisibility hints of a real launch (tests/test_aot_compile.py compiles all of
# them): 8 warps spread the fp32 [BLOCK_B, BLOCK_V] accumulator over two warpgroups.
GPU_TILES = {
    # (operand bytes, row bucket): tile.  "small": B <= SMALL_BATCH (a sweep's 256-row steps): 64-row
    # blocks, for more programs.  "large": 128-row blocks, each W tile serves more rows.
    (2, "small"): (64, 128, 64, 8, 3),
    (2, "large"): (128, 128, 32, 8, 3),
    (4, "small"): (64, 64, 32, 8, 3),
    (4, "large"): (64, 64, 32, 8, 3),  # 128-row fp32 tiles spill with "ieee" dots
}
SMALL_BATCH = 1024
INTERPRETER_TILE = (16, 128, 64, 4, 1)  # one interpreted program costs ~1 ms: few, large ones
INTERPRETER_TILES_PER_SPLIT = 2  # so that the tests' V = 300 spans two splits


def row_bucket(num_rows: int) -> str:
    return "small" if num_rows <= SMALL_BATCH else "large"


def gpu_tile(num_rows: int, dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """The tile of a launch: a function of (dtype, row bucket) only, never of timings."""
    return GPU_TILES[(4 if dtype == torch.float32 else 2, row_bucket(num_rows))]


def _launch_options(num_rows: int, dtype: torch.dtype) -> dict:
    on_gpu = not interpreter_enabled()
    block_b, block_v, block_d, warps, stages = gpu_tile(num_rows, dtype) if on_gpu else INTERPRETER_TILE
    return {"BLOCK_B": block_b, "BLOCK_V": block_v, "BLOCK_D": block_d, "num_warps": warps, "num_stages": stages}


def _dot_flags(dtype: torch.dtype) -> dict:
    # Under the interpreter a bf16/fp16 tl.dot is silently wrong: widen first.  fp32 inputs follow
    # torch's own matmul setting: full fp32 ("ieee") unless TF32 is allowed, as torch.mm does.
    tf32 = torch.get_float32_matmul_precision() != "highest"
    precision = "ieee" if dtype == torch.float32 and not tf32 else "tf32"
    return {"UPCAST": interpreter_enabled() and dtype != torch.float32, "DOT_PRECISION": precision}


def _num_splits(row_programs: int, tiles: int, device: torch.device) -> int:
    """Vocabulary splits: about two programs per SM in all (a function of the device, not timings)."""
    if device.type != "cuda":
        return triton.cdiv(tiles, INTERPRETER_TILES_PER_SPLIT)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, triton.cdiv(2 * sms, row_programs)))


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def lse_partials(z, weight, bias, num_splits: int | None = None):
    """Per-split (max, sum of exp) [L, B, S] of z [L, B, d], weight [L, V, d], bias [L, V] | None."""
    z, weight = _unit_stride(z), _unit_stride(weight)
    bias = None if bias is None else _unit_stride(bias)
    num_layers, num_rows, hidden = z.shape
    vocab = weight.shape[1]
    options = _launch_options(num_rows, z.dtype)
    row_blocks = triton.cdiv(num_rows, options["BLOCK_B"])
    tiles = triton.cdiv(vocab, options["BLOCK_V"])
    splits = num_splits or _num_splits(row_blocks * num_layers, tiles, z.device)
    tiles_per_split = triton.cdiv(tiles, min(splits, tiles))
    splits = triton.cdiv(tiles, tiles_per_split)  # no split without a tile
    maxes = torch.empty(num_layers, num_rows, splits, dtype=torch.float32, device=z.device)
    sums = torch.empty_like(maxes)
    bias_arg = weight if bias is None else bias
    bag_ce_lse_partial_kernel[(row_blocks, splits, num_layers)](
        z,
        weight,
        bias_arg,
        maxes,
        sums,
        num_rows,
        vocab,
        hidden,
        tiles_per_split,
        z.stride(0),
        z.stride(1),
        weight.stride(0),
        weight.stride(1),
        0 if bias is None else bias.stride(0),
        HAS_BIAS=bias is not None,
        NUM_SPLITS=splits,
        **_dot_flags(z.dtype),
        **options,
    )
    return maxes, sums


def merge_lse(maxes: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """LSE [L, B] of the splits' partials, merged in split order (two-pass: no atomics)."""
    top = maxes.amax(-1, keepdim=True)
    return top.squeeze(-1) + (sums * torch.exp(maxes - top)).sum(-1).log()


def target_sums(z, weight, bias, bags) -> torch.Tensor:
    """sum_k c_k (W z + b)_{t_k} of every row and layer, fp32 [L, B]."""
    z, weight = _unit_stride(z), _unit_stride(weight)
    bias = None if bias is None else _unit_stride(bias)
    num_layers, num_rows, hidden = z.shape
    out = torch.empty(num_layers, num_rows, dtype=torch.float32, device=z.device)
    if num_rows == 0:
        return out
    bag_ce_target_kernel[(num_rows, num_layers)](
        z,
        weight,
        weight if bias is None else bias,
        bags.offsets,
        bags.ids,
        bags.counts,
        out,
        num_rows,
        hidden,
        z.stride(0),
        z.stride(1),
        weight.stride(0),
        weight.stride(1),
        0 if bias is None else bias.stride(0),
        HAS_BIAS=bias is not None,
        BLOCK_N=BLOCK_N,
        BLOCK_D=TARGET_BLOCK_D,
    )
    return out


def forward(z, weight, bias, bags, num_splits: int | None = None):
    """LSE and target sums, fp32 [L, B] each, of z [L, B, d], weight [L, V, d], bias [L, V] | None."""
    maxes, sums = lse_partials(z, weight, bias, num_splits)
    return merge_lse(maxes, sums), target_sums(z, weight, bias, bags)


def logits_into(z_rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """fp32 ``out`` [R, V] = z_rows [R, d] @ weight [V, d]^T + bias: the fused sweep's logit product."""
    num_rows, hidden = z_rows.shape
    vocab = weight.shape[0]
    z_rows, weight = _unit_stride(z_rows), _unit_stride(weight)
    options = _launch_options(num_rows, z_rows.dtype)
    grid = (triton.cdiv(num_rows, options["BLOCK_B"]), triton.cdiv(vocab, options["BLOCK_V"]))
    bag_ce_logits_kernel[grid](
        z_rows,
        weight,
        weight if bias is None else bias,
        out,
        num_rows,
        vocab,
        hidden,
        z_rows.stride(0),
        weight.stride(0),
        out.stride(0),
        HAS_BIAS=bias is not None,
        **_dot_flags(z_rows.dtype),
        **options,
    )


def block_rows(vocab: int) -> int:
    """Rows per block of the fused sweep on a GPU: a CHUNK_BYTES fp32 logits block."""
    return max(16, min(8192, CHUNK_BYTES // (4 * max(vocab, 1)) // 16 * 16))


def backward(z, weight, bias, bags, lse, coef, needs, filter_eps=None):
    """Gradients (z fp32 [L, B, d], weight [L, V, d] in its dtype, bias fp32 [L, V]); None where not needed.

    The recompute path: logit tiles are formed again from the saved LSE, one vocabulary chunk at a
    time.  Used for reduction="none" (a scalar loss takes the fused sweep instead).
    """
    z, weight = _unit_stride(z), _unit_stride(weight)
    bias = None if bias is None else _unit_stride(bias)
    coef = coef.float().expand(lse.shape).contiguous()
    num_layers, num_rows, hidden = z.shape
    vocab = weight.shape[1]
    dtype = z.dtype
    chunk = max(128, min(vocab, CHUNK_BYTES // (max(num_rows, 1) * dtype.itemsize)) // 128 * 128)
    dlogits = torch.empty(num_rows, min(chunk, vocab), dtype=dtype, device=z.device)
    grad_z = torch.zeros(num_layers, num_rows, hidden, dtype=torch.float32, device=z.device) if needs[0] else None
    grad_w = torch.empty_like(weight) if needs[1] else None
    grad_b = torch.empty(num_layers, vocab, dtype=torch.float32, device=z.device) if needs[2] else None
    options = _launch_options(num_rows, dtype)
    flags = _dot_flags(dtype)
    nnz = bags.ids.numel()
    if filter_eps is not None:
        is_target = torch.zeros(vocab, dtype=torch.bool, device=z.device)
        is_target[bags.ids] = True
        # Per-row threshold on |dlogit|; rows with zero dlogits (empty bag, zero coef) decide nothing.
        row_scale = (coef * bags.lengths).abs()
        thresholds = torch.where(row_scale > 0, filter_eps * row_scale, torch.inf).to(dtype)
    for layer in range(num_layers):
        z_layer, w_layer = z[layer], weight[layer]
        b_layer = w_layer if bias is None else bias[layer]
        for start in range(0, vocab, chunk):
            stop = min(start + chunk, vocab)
            dl = dlogits[:, : stop - start]
            grid = (triton.cdiv(num_rows, options["BLOCK_B"]), triton.cdiv(stop - start, options["BLOCK_V"]))
            bag_ce_logit_grad_kernel[grid](
                z_layer,
                w_layer,
                b_layer,
                lse[layer],
                coef[layer],
                bags.lengths,
                dl,
                num_rows,
                vocab,
                hidden,
                start,
                stop,
                z.stride(1),
                weight.stride(1),
                dl.stride(0),
                HAS_BIAS=bias is not None,
                **flags,
                **options,
            )
            if nnz:
                bag_ce_count_scatter_kernel[(triton.cdiv(nnz, 128),)](
                    dl,
                    bags.row_of,
                    bags.ids,
                    bags.counts,
                    coef[layer],
                    nnz,
                    start,
                    stop,
                    dl.stride(0),
                    BLOCK_N=128,
                )
            kept = None
            if filter_eps is not None:
                # Opt-in: one host sync per chunk (the number of kept columns sizes the products).
                keep = (dl.abs() >= thresholds[layer, :, None]).any(0) | is_target[start:stop]
                kept = keep.nonzero().squeeze(1)
                if kept.numel() == stop - start:
                    kept = None
            if kept is None:
                if grad_z is not None:
                    grad_z[layer] += (dl @ w_layer[start:stop]).float()
                if grad_w is not None:
                    grad_w[layer, start:stop] = dl.t() @ z_layer
            else:
                kept_dl = dl.index_select(1, kept)
                if grad_z is not None:
                    grad_z[layer] += (kept_dl @ w_layer[start:stop].index_select(0, kept)).float()
                if grad_w is not None:
                    grad_w[layer, start:stop] = 0
                    grad_w[layer, start:stop].index_copy_(0, kept, (kept_dl.t() @ z_layer).to(grad_w.dtype))
            if grad_b is not None:
                grad_b[layer, start:stop] = dl.sum(0, dtype=torch.float32)  # no fp32 copy of dl
    return grad_z, grad_w, grad_b


# ---- ahead-of-time compile specs (tests/test_aot_compile.py) -------------------------------------
_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def tile_constexprs(tile: tuple[int, int, int, int, int]) -> dict[str, int]:
    """Block sizes and compile options of one GPU_TILES entry, in aot_specs()' constexpr form."""
    block_b, block_v, block_d, num_warps, num_stages = tile
    return {
        "BLOCK_B": block_b,
        "BLOCK_V": block_v,
        "BLOCK_D": block_d,
        "num_warps": num_warps,
        "num_stages": num_stages,
    }


def aot_specs() -> list[tuple[str, object, dict[str, str], dict[str, object]]]:
    """(name, jit function, signature, constexprs) of every kernel at every GPU tile and dtype.

    fp32 operands compile with "ieee" dots (torch's default precision) and "tf32" ones; bf16 with a
    bf16 bias and, as the mixed case, an fp32 bias.  Divisibility hints: see tests/test_aot_compile.py.
    """
    specs, seen = [], set()
    for (itemsize, bucket), tile in GPU_TILES.items():
        if (itemsize, tile) in seen:  # one compile per distinct tile
            continue
        seen.add((itemsize, tile))
        dtype = torch.float32 if itemsize == 4 else torch.bfloat16
        # (bias dtype, dot precision): fp32 operands run "ieee" dots, or "tf32" when torch allows TF32
        variants = (("fp32", "ieee"), ("fp32", "tf32")) if itemsize == 4 else (("bf16", "tf32"), ("fp32", "tf32"))
        for bias_type, precision in variants:
            for name, fn, signature in _signatures(_TYPE[dtype], bias_type):
                flags = {"HAS_BIAS": True, "UPCAST": False, "DOT_PRECISION": precision}
                if fn is bag_ce_lse_partial_kernel:
                    flags.update(NUM_SPLITS=4, _not_divisible=("tiles_per_split",))
                label = f"{_TYPE[dtype]}_{precision}" if itemsize == 4 else f"{_TYPE[dtype]}_b{bias_type}"
                specs.append((f"{name}_{label}_{bucket}", fn, signature, {**flags, **tile_constexprs(tile)}))
    for dtype in ("fp32", "bf16"):
        specs.append(
            (
                f"bag_ce_target_{dtype}",
                bag_ce_target_kernel,
                _target_signature(dtype),
                {"HAS_BIAS": True, "BLOCK_N": BLOCK_N, "BLOCK_D": TARGET_BLOCK_D, "num_warps": 4},
            )
        )
        specs.append(
            (
                f"bag_ce_count_scatter_{dtype}",
                bag_ce_count_scatter_kernel,
                {
                    "dl_ptr": f"*{dtype}",
                    "row_of_ptr": "*i64",
                    "ids_ptr": "*i64",
                    "counts_ptr": "*fp32",
                    "coef_ptr": "*fp32",
                    "nnz": "i32",
                    "chunk_start": "i32",
                    "chunk_stop": "i32",
                    "stride_dl": "i32",
                },
                {"BLOCK_N": 128, "num_warps": 4, "_not_divisible": ("nnz",)},
            )
        )
    return specs


def _target_signature(dtype: str) -> dict[str, str]:
    return {
        "z_ptr": f"*{dtype}",
        "w_ptr": f"*{dtype}",
        "b_ptr": "*fp32",
        "offsets_ptr": "*i64",
        "ids_ptr": "*i64",
        "counts_ptr": "*fp32",
        "target_ptr": "*fp32",
        "num_rows": "i32",
        "hidden": "i32",
        "stride_zl": "i64",
        "stride_zb": "i32",
        "stride_wl": "i64",
        "stride_wv": "i32",
        "stride_bl": "i32",
    }


def _signatures(dtype: str, bias: str):
    operands = {"z_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "b_ptr": f"*{bias}"}
    return [
        (
            "bag_ce_lse_partial",
            bag_ce_lse_partial_kernel,
            {
                **operands,
                "max_ptr": "*fp32",
                "sum_ptr": "*fp32",
                "num_rows": "i32",
                "vocab": "i32",
                "hidden": "i32",
                "tiles_per_split": "i32",
                "stride_zl": "i64",
                "stride_zb": "i32",
                "stride_wl": "i64",
                "stride_wv": "i32",
                "stride_bl": "i32",
            },
        ),
        (
            "bag_ce_logits",
            bag_ce_logits_kernel,
            {
                **operands,
                "out_ptr": "*fp32",
                "num_rows": "i32",
                "vocab": "i32",
                "hidden": "i32",
                "stride_zb": "i32",
                "stride_wv": "i32",
                "stride_out": "i32",
            },
        ),
        (
            "bag_ce_logit_grad",
            bag_ce_logit_grad_kernel,
            {
                **operands,
                "lse_ptr": "*fp32",
                "coef_ptr": "*fp32",
                "lengths_ptr": "*fp32",
                "dl_ptr": f"*{dtype}",
                "num_rows": "i32",
                "vocab": "i32",
                "hidden": "i32",
                "chunk_start": "i32",
                "chunk_stop": "i32",
                "stride_zb": "i32",
                "stride_wv": "i32",
                "stride_dl": "i32",
            },
        ),
    ]
