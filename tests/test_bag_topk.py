"""bag_topk (CPU path, Triton kernel under the interpreter) against bag_topk_reference."""

from __future__ import annotations

import pytest
import torch

from fastmi.kernels import backend, bag_topk
from fastmi.kernels.bag_topk_cpu import exact_topk
from fastmi.kernels.bag_topk_triton import bag_topk_triton
from fastmi.kernels.reference import bag_topk_reference, logits_reference

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-4}


def _problem(layers, rows, vocab, dim, dtype, with_bias=True):
    """Fresh random inputs; layers=None gives the unbatched form."""
    lead = () if layers is None else (layers,)
    z = torch.randn(*lead, rows, dim).to(dtype)
    weight = torch.randn(*lead, vocab, dim).to(dtype)
    bias = torch.randn(*lead, vocab).to(dtype) if with_bias else None
    return z, weight, bias


def _run(which, z, weight, bias, k):
    with backend(which):
        return bag_topk(z, weight, bias, k)


def _assert_matches_reference(ids, lse, z, weight, bias, k, dtype):
    ref_ids, ref_lse = bag_topk_reference(z, weight, bias, k)
    assert ids.dtype == torch.int64 and lse.dtype == torch.float32
    assert ids.shape == ref_ids.shape and lse.shape == ref_lse.shape
    torch.testing.assert_close(lse, ref_lse, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    # the logits of the returned ids are the k largest, in order (robust to rounding near-ties) ...
    logits = logits_reference(z, weight, bias)
    torch.testing.assert_close(logits.gather(-1, ids), logits.gather(-1, ref_ids), rtol=0, atol=TOLERANCE[dtype])
    # ... and on these seeded inputs there are no near-ties, so the ids are the reference's
    assert torch.equal(ids, ref_ids)


CPU_GRID = [
    # layers, rows, vocab, dim, k
    (None, 1, 70, 5, 1),
    (None, 37, 203, 19, 5),
    (None, 16, 130, 8, 130),  # k == V: every id, sorted
    (3, 9, 101, 7, 4),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layers,rows,vocab,dim,k", CPU_GRID)
def test_cpu_path_matches_reference(layers, rows, vocab, dim, k, dtype):
    z, weight, bias = _problem(layers, rows, vocab, dim, dtype, with_bias=rows != 1)
    ids, lse = _run("cpu", z, weight, bias, k)
    _assert_matches_reference(ids, lse, z, weight, bias, k, dtype)


def test_cpu_path_row_blocks_cover_every_row():
    from fastmi.kernels.bag_topk_cpu import bag_topk_cpu

    z, weight, bias = _problem(None, 23, 90, 6, torch.float32)
    ids, lse = bag_topk_cpu(z, weight, bias, 3, rows_per_block=4)  # 6 blocks, the last partial
    _assert_matches_reference(ids, lse, z, weight, bias, 3, torch.float32)


TRITON_GRID = [
    # layers, rows, vocab, dim, k, dtype
    (None, 1, 70, 5, 1, torch.float32),
    (None, 37, 203, 19, 5, torch.float32),
    (2, 33, 131, 67, 8, torch.bfloat16),  # odd B over two row blocks, d over two d-blocks
]


@pytest.mark.parametrize("layers,rows,vocab,dim,k,dtype", TRITON_GRID)
def test_triton_kernel_matches_reference(layers, rows, vocab, dim, k, dtype):
    z, weight, bias = _problem(layers, rows, vocab, dim, dtype, with_bias=rows != 1)
    ids, lse = _run("triton", z, weight, bias, k)
    _assert_matches_reference(ids, lse, z, weight, bias, k, dtype)


def test_triton_vocabulary_splits_merge_exactly():
    z, weight, bias = _problem(2, 5, 300, 9, torch.float32)
    ids, lse = bag_topk_triton(z, weight, bias, 6, num_splits=3)  # 5 tiles of 64 over 3 splits
    _assert_matches_reference(ids, lse, z, weight, bias, 6, torch.float32)


def test_triton_backend_falls_back_for_large_k():
    z, weight, bias = _problem(None, 4, 100, 6, torch.float32)
    ids, lse = _run("triton", z, weight, bias, 70)  # above the kernel's bucket limit of 64
    _assert_matches_reference(ids, lse, z, weight, bias, 70, torch.float32)


def _tied_problem(layers=None):
    """Small integers: every logit is exact in fp32, so all paths see the same ties."""
    lead = () if layers is None else (layers,)
    z = torch.randint(-2, 3, (*lead, 11, 4)).float()
    z[..., 0, :] = 0.0  # a row where all V logits tie (bias-free): ids 0..k-1
    weight = torch.randint(-2, 3, (*lead, 50, 4)).float()
    return z, weight


@pytest.mark.parametrize("which", ["cpu", "triton"])
@pytest.mark.parametrize("k", [1, 7])
def test_planted_ties_go_to_the_smaller_id(which, k):
    z, weight = _tied_problem(layers=2)
    ids, lse = _run(which, z, weight, None, k)
    ref_ids, ref_lse = bag_topk_reference(z, weight, None, k)
    assert torch.equal(ids, ref_ids)
    assert torch.equal(ids[:, 0], torch.arange(k).expand(2, k))
    torch.testing.assert_close(lse, ref_lse)


@pytest.mark.parametrize("which", ["cpu", "triton"])
def test_tie_group_straddling_the_kth_place(which):
    # logits = bias exactly (z = 0): best is id 6 (5.0), then 3.0 at ids 2 and 9, then the tie
    # group of 1.0 at ids 0, 4, 5, 8 of which k = 5 keeps the two smallest
    bias = torch.tensor([1.0, -1.0, 3.0, 0.5, 1.0, 1.0, 5.0, -0.0, 1.0, 3.0])
    z, weight = torch.zeros(3, 4), torch.randn(10, 4)
    ids, _ = _run(which, z, weight, bias, 5)
    assert ids.tolist() == [[6, 2, 9, 0, 4]] * 3


def test_exact_topk_repairs_a_large_tie_group():
    logits = torch.zeros(3, 1000)
    logits[1, 500] = 1.0
    logits[2, 999] = -1.0
    ids = exact_topk(logits, 4)
    assert ids.tolist() == [[0, 1, 2, 3], [500, 0, 1, 2], [0, 1, 2, 3]]


@pytest.mark.parametrize("which", ["cpu", "triton"])
def test_two_runs_are_bit_identical(which):
    z, weight, bias = _problem(None, 21, 150, 10, torch.float32)
    first = _run(which, z, weight, bias, 4)
    second = _run(which, z, weight, bias, 4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize(
    "z_shape,w_shape,b_shape,k,message",
    [
        ((4, 5), (10, 5), (10,), 0, "k must be"),
        ((4, 5), (10, 5), (10,), 11, "k must be"),
        ((4, 5), (10, 6), None, 2, "d = 5"),
        ((2, 4, 5), (10, 5), None, 2, "z \\[L, B, d\\] with weight \\[L, V, d\\]"),
        ((2, 4, 5), (3, 10, 5), None, 2, "layers"),
        ((4, 5), (10, 5), (9,), 2, "bias"),
    ],
)
def test_bad_input_gets_a_clear_error(z_shape, w_shape, b_shape, k, message):
    bias = torch.randn(b_shape) if b_shape else None
    with pytest.raises(ValueError, match=message):
        bag_topk(torch.randn(z_shape), torch.randn(w_shape), bias, k)
