"""TrainConfig.precision: bf16 operands with fp32 master weights, tf32 as a matmul setting."""

from __future__ import annotations

import pytest
import torch
from test_bag_cross_entropy import make_bags

from fastmi.probe.precision import loss_operands, matmul_precision, resolve_precision
from fastmi.probe.training import TrainConfig, fit_probes


def test_bf16_operands_keep_fp32_master_gradients():
    z, weight = torch.randn(4, 6), torch.randn(10, 6, requires_grad=True)
    z16, w16 = loss_operands("bf16", z, weight)
    assert z16.dtype == w16.dtype == torch.bfloat16
    (w16.float() * 2).sum().backward()
    assert weight.grad.dtype == torch.float32 and torch.equal(weight.grad, torch.full_like(weight, 2.0))
    assert loss_operands("fp32", z, weight)[1] is weight


def test_auto_is_bf16_on_a_gpu_and_fp32_on_a_cpu():
    assert TrainConfig().precision == "auto"
    assert resolve_precision("auto", "cuda:0") == "bf16" and resolve_precision("auto", "cpu") == "fp32"
    z, weight = torch.randn(2, 3), torch.randn(4, 3)
    assert loss_operands("auto", z, weight) == (z, weight)  # CPU tensors: fp32 as they are


def test_tf32_is_scoped_and_bad_names_are_rejected():
    before = torch.get_float32_matmul_precision()
    with matmul_precision("tf32"):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match="precision must be one of"):
        loss_operands("fp16", torch.zeros(1), torch.zeros(1))


def test_bf16_training_lands_near_fp32():
    targets = make_bags(60, vocab=50, max_size=6)
    centers = torch.randn(50, 16)
    # features that carry the bag: the mean of its ids' centres, plus noise
    z = torch.stack(
        [
            centers[targets.ids[targets.offsets[i] : targets.offsets[i + 1]]].mean(0)
            if targets.offsets[i + 1] > targets.offsets[i]
            else torch.zeros(16)
            for i in range(60)
        ]
    )
    z = (z + 0.1 * torch.randn_like(z))[None]
    keep = targets.lengths > 0
    rows = torch.arange(60)[keep]
    train, val = rows[:40], rows[40:]
    fits = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(max_epochs=5, batch_size=16, precision=precision)
        fits[precision] = fit_probes(
            z[:, train], targets.select(train), z[:, val], targets.select(val), 50, config, progress=False
        )
    ce32, ce16 = fits["fp32"].validation_ce_nats[0], fits["bf16"].validation_ce_nats[0]
    assert ce32 < 3.9  # learned something: log(50) = 3.91 is the uniform guess
    assert abs(ce32 - ce16) < 0.05 and ce32 != ce16  # close, and the bf16 path did run
    assert fits["bf16"].weight.dtype == torch.float32
