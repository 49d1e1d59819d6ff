"""bag_cross_entropy / bag_topk: mixed dtypes, the V-split forward, and which path a call takes.

Held against the torch reference on fresh random inputs.  The Triton kernels run under the
interpreter, where the V-split forward uses two 128-wide tiles per split (so V = 300 spans two
splits and V = 100 fits in one).
"""

from __future__ import annotations

import pytest
import torch
from test_bag_cross_entropy import HIDDEN, VOCAB, assert_close, loss_and_grads, make_bags

import fastmi
from fastmi.kernels import backend, bag_cross_entropy, bag_cross_entropy_triton, bag_topk
from fastmi.kernels._dtypes import compute_dtype
from fastmi.kernels.bag_cross_entropy import PreparedBags
from fastmi.kernels.reference import bag_cross_entropy_reference, bag_topk_reference, logits_reference

BF16, FP32 = torch.bfloat16, torch.float32


def run(path, *args):
    with backend(path):
        return bag_cross_entropy(*args, block_rows=4)


def leaf(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.detach().to(dtype).requires_grad_()


# ---- mixed dtypes -------------------------------------------------------------------------------
MIXES = [(FP32, BF16, FP32), (BF16, FP32, BF16), (BF16, BF16, FP32), (torch.float16, BF16, None)]


@pytest.mark.parametrize("path", ["cpu", "triton", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("z_dtype,w_dtype,b_dtype", MIXES)
def test_mixed_dtypes_match_the_reference_at_the_compute_dtype(path, reduction, z_dtype, w_dtype, b_dtype):
    z = leaf(torch.randn(2, 13, HIDDEN), z_dtype)
    weight = leaf(0.3 * torch.randn(2, VOCAB, HIDDEN), w_dtype)
    bias = None if b_dtype is None else leaf(0.5 * torch.randn(2, VOCAB), b_dtype)
    targets = make_bags(13)
    loss, grads = loss_and_grads(lambda *a: run(path, *a), z, weight, bias, targets, reduction, "row")
    # The rule: both operands rounded to the weight's dtype, fp32 accumulation.
    assert compute_dtype(z, weight) == w_dtype
    rounded = [z.detach().to(w_dtype).float(), weight.detach().float()]
    ref_inputs = [leaf(t, FP32) for t in rounded] + ([] if bias is None else [leaf(bias, FP32)])
    ref_loss, ref_grads = loss_and_grads(
        bag_cross_entropy_reference,
        *ref_inputs[:2],
        ref_inputs[2] if bias is not None else None,
        targets,
        reduction,
        "row",
    )
    assert loss.dtype == FP32
    assert_close(loss, ref_loss, 2e-5)
    for grad, ref_grad, given in zip(grads, ref_grads, [t for t in (z, weight, bias) if t is not None]):
        assert grad.dtype == given.dtype  # gradients in each input's own dtype
        assert_close(grad, ref_grad, 1e-2 if given.dtype != FP32 or w_dtype != FP32 else 2e-5)


@pytest.mark.parametrize("path", ["cpu", "triton"])
def test_autocast_sets_the_compute_dtype(path):
    z = leaf(torch.randn(13, HIDDEN), FP32)
    weight = leaf(0.3 * torch.randn(VOCAB, HIDDEN), FP32)
    targets = make_bags(13)
    with torch.autocast("cpu", dtype=BF16):
        assert compute_dtype(z, weight) == BF16
        loss = run(path, z, weight, None, targets, "mean", "row")
    loss.backward()
    expected = bag_cross_entropy_reference(z.detach().to(BF16), weight.detach().to(BF16), None, targets)
    assert_close(loss, expected, 2e-5)
    assert z.grad.dtype == FP32 and weight.grad.dtype == FP32
    # and it differs from the fp32 result: the rounding did happen
    assert abs(loss.item() - bag_cross_entropy_reference(z, weight, None, targets).item()) > 1e-6


@pytest.mark.parametrize("path", ["cpu", "triton"])
@pytest.mark.parametrize("z_dtype,w_dtype", [(FP32, BF16), (BF16, FP32)])
def test_bag_topk_mixed_dtypes(path, z_dtype, w_dtype):
    z, weight, bias = torch.randn(2, 9, 19).to(z_dtype), torch.randn(2, 203, 19).to(w_dtype), torch.randn(2, 203)
    with backend(path):
        ids, lse = bag_topk(z, weight, bias, 5)
    ref_ids, ref_lse = bag_topk_reference(z.to(w_dtype), weight, bias, 5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-4, atol=1e-4)
    logits = logits_reference(z.to(w_dtype), weight, bias)
    torch.testing.assert_close(logits.gather(-1, ids), logits.gather(-1, ref_ids), rtol=0, atol=1e-4)


# ---- the V-split forward ------------------------------------------------------------------------
def _forward_against_reference(layers, rows, vocab, targets, num_splits=None, dtype=FP32, with_bias=True):
    z = torch.randn(layers, rows, HIDDEN).to(dtype)
    weight = (0.3 * torch.randn(layers, vocab, HIDDEN)).to(dtype)
    bias = (0.5 * torch.randn(layers, vocab)) if with_bias else None
    bags = PreparedBags(targets.offsets, targets.ids, targets.counts, vocab)
    lse, target_sum = bag_cross_entropy_triton.forward(z, weight, bias, bags, num_splits=num_splits)
    logits = logits_reference(z, weight, bias)
    ref_target = torch.zeros(layers, rows).index_add_(
        1, targets.row_index, targets.counts.float() * logits[:, targets.row_index, targets.ids]
    )
    assert_close(lse, torch.logsumexp(logits, -1), 2e-5)
    assert_close(target_sum, ref_target, 2e-5)


def test_v_split_spans_splits_with_a_boundary_inside_bags():
    # Splits are 256 wide here; every bag of these rows holds ids on both sides of 256.
    ids = [torch.tensor([3, 255, 256, 299]), torch.tensor([250, 260]), torch.tensor([0, 128, 256])]
    targets = fastmi.BagTargets(torch.tensor([0, 4, 6, 9]), torch.cat(ids), torch.tensor([1, 2, 3, 1, 4, 1, 2, 1, 1]))
    maxes, _ = bag_cross_entropy_triton.lse_partials(torch.randn(1, 3, 8), torch.randn(1, 300, 8), None)
    assert maxes.shape[-1] == 2  # two splits did run
    _forward_against_reference(3, 3, 300, targets)


@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_v_split_merge_matches_for_any_split_count(num_splits):
    _forward_against_reference(2, 13, VOCAB, make_bags(13), num_splits=num_splits, with_bias=False)


def test_vocabulary_smaller_than_one_split():
    vocab = 100
    maxes, _ = bag_cross_entropy_triton.lse_partials(torch.randn(1, 3, 8), torch.randn(1, vocab, 8), None)
    assert maxes.shape[-1] == 1
    _forward_against_reference(2, 13, vocab, make_bags(13, vocab=vocab), dtype=BF16)


# ---- which path runs ----------------------------------------------------------------------------
def test_scalar_loss_forms_gradients_in_the_forward_and_none_recomputes(monkeypatch):
    calls = []
    for name in ("backward", "logits_into", "forward"):
        original = getattr(bag_cross_entropy_triton, name)
        monkeypatch.setattr(
            bag_cross_entropy_triton, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k)
        )
    z = leaf(torch.randn(2, 13, HIDDEN), FP32)
    weight = leaf(0.3 * torch.randn(2, VOCAB, HIDDEN), FP32)
    targets = make_bags(13)
    for reduction in ("mean", "sum"):
        calls.clear()
        loss, grads = loss_and_grads(lambda *a: run("triton", *a), z, weight, None, targets, reduction, "row")
        assert "backward" not in calls and "forward" not in calls and calls.count("logits_into") == 2 * 4
        ref_loss, ref_grads = loss_and_grads(bag_cross_entropy_reference, z, weight, None, targets, reduction, "row")
        assert_close(loss, ref_loss, 2e-5)
        for grad, ref in zip(grads, ref_grads):
            assert_close(grad, ref, 2e-5)
    calls.clear()
    loss_and_grads(lambda *a: run("triton", *a), z, weight, None, targets, "none", "row")
    assert calls == ["forward", "backward"]
    calls.clear()
    with torch.no_grad():
        run("triton", z, weight, None, targets, "mean", "row")
    assert calls == ["forward"]
