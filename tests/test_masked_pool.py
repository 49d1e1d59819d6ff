"""masked_pool (torch path, Triton kernel under the interpreter) against masked_pool_reference."""

from __future__ import annotations

import pytest
import torch

from fastmi.kernels import backend, masked_pool
from fastmi.kernels.reference import POOL_MODES, masked_pool_reference

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}


def _mask(kind: str, rows: int, length: int) -> torch.Tensor:
    """[rows, length] bool; row 0 is empty and row 1 has a single token whenever rows allow."""
    lengths = torch.randint(1, length + 1, (rows,))
    right = torch.arange(length)[None, :] < lengths[:, None]
    if kind == "right":
        mask = right
    elif kind == "left":
        mask = right.flip(1)
    elif kind == "holes":
        mask = torch.rand(rows, length) < 0.5
    else:
        raise ValueError(kind)
    if rows > 2:
        mask[0] = False
        mask[1] = False
        mask[1, length // 2] = True
    return mask


def _pool(which, hidden, mask, mode):
    with backend(which):
        return masked_pool(hidden, mask, mode)


def _assert_matches_reference(out, hidden, mask, mode):
    ref = masked_pool_reference(hidden, mask, mode)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    tol = TOLERANCE[hidden.dtype]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["right", "left", "holes"])
@pytest.mark.parametrize("mode", POOL_MODES)
def test_torch_path_matches_reference(mode, kind, dtype):
    hidden = torch.randn(7, 13, 19).to(dtype)
    mask = _mask(kind, 7, 13)
    _assert_matches_reference(_pool("cpu", hidden, mask, mode), hidden, mask, mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", POOL_MODES)
def test_triton_kernel_matches_reference(mode, dtype):
    # T = 70 spans two T-blocks of 64, d = 131 two d-blocks of 128
    hidden = torch.randn(5, 70, 131).to(dtype)
    mask = _mask("holes", 5, 70)
    mask[2] = torch.arange(70) >= 60  # left padding
    mask[3] = torch.arange(70) < 3  # right padding
    _assert_matches_reference(_pool("triton", hidden, mask, mode), hidden, mask, mode)


@pytest.mark.parametrize("which", ["cpu", "triton"])
def test_single_position_and_strided_hidden(which):
    hidden = torch.randn(4, 6, 1).transpose(0, 1)  # [6, 4, 1] view, non-contiguous
    mask = torch.tensor([[1, 0, 0, 0]] * 6, dtype=torch.int64) * torch.arange(6)[:, None]  # row 0 empty
    for mode in POOL_MODES:
        _assert_matches_reference(_pool(which, hidden, mask, mode), hidden, mask != 0, mode)


@pytest.mark.parametrize("which", ["cpu", "triton"])
def test_nonzero_mask_values_count_as_set(which):
    hidden = torch.randn(3, 5, 4)
    weights = torch.tensor([[0, 2, 3, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 7]])
    out = _pool(which, hidden, weights, "mean")
    torch.testing.assert_close(out, masked_pool_reference(hidden, weights != 0, "mean"))


@pytest.mark.parametrize("which", ["cpu", "triton"])
def test_two_runs_are_bit_identical(which):
    hidden = torch.randn(4, 9, 10).bfloat16()
    mask = _mask("holes", 4, 9)
    assert torch.equal(_pool(which, hidden, mask, "mean"), _pool(which, hidden, mask, "mean"))


@pytest.mark.parametrize("which", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_matches_reference(which, dtype):
    hidden = torch.randn(4, 7, 6).to(dtype).requires_grad_()
    mask = _mask("holes", 4, 7)
    upstream = torch.randn(4, 6)
    for mode in POOL_MODES:
        (grad,) = torch.autograd.grad((_pool(which, hidden, mask, mode) * upstream).sum(), hidden)
        (ref,) = torch.autograd.grad((masked_pool_reference(hidden, mask, mode) * upstream).sum(), hidden)
        torch.testing.assert_close(grad, ref, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_no_positions_gives_zeros():
    out = masked_pool(torch.randn(2, 0, 3), torch.zeros(2, 0, dtype=torch.bool), "last")
    assert torch.equal(out, torch.zeros(2, 3))


@pytest.mark.parametrize(
    "hidden_shape,mask_shape,mode,message",
    [
        ((2, 3, 4), (2, 3), "median", "pooling mode"),
        ((2, 3), (2, 3), "mean", r"\[B, T, d\]"),
        ((2, 3, 4), (2, 4), "mean", "mask must be"),
    ],
)
def test_bad_input_gets_a_clear_error(hidden_shape, mask_shape, mode, message):
    with pytest.raises(ValueError, match=message):
        masked_pool(torch.randn(hidden_shape), torch.ones(mask_shape, dtype=torch.bool), mode)
