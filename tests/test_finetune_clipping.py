"""Gradient clipping treats the arms alike: the own loss and lambda * recoverability are clipped each
on its own, so the own loss's step is the same in a treatment and its control."""

from __future__ import annotations

import pytest
import torch

from fastmi.finetune.loss import MultiLayerRecoverabilityLoss
from tests.test_finetune import tiny_trainer
from tests.tiny import make_tiny_model, random_sentences


def _one_sgd_step(path, lam, max_grad_norm, probe_scale, tmp_path, batch_size=8, accumulation=1, **arguments):
    """The model's parameter update (divided by the learning rate) of one SGD step on one fixed batch;
    ``arguments`` go to the TrainingArguments (``ddp_backend`` under DDP)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    data = [{"input_ids": tokenizer(s)["input_ids"]} for s in random_sentences(8, seed=5)]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    recover = MultiLayerRecoverabilityLoss(16, len(tokenizer), layers=[1])
    with torch.no_grad():  # probes at zero pass no gradient to the model; non-zero ones do
        for p in recover.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * probe_scale)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = tiny_trainer(
        model,
        tokenizer,
        data,
        tmp_path / f"run-{lam}-{probe_scale}-{accumulation}",
        recover,
        lam,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=max_grad_norm,
        seed=0,
        **arguments,
    )
    trainer.train()
    return torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])


@pytest.mark.parametrize("max_grad_norm", [1e-3, 1e6])  # own-loss gradient above the limit, and far below
def test_own_loss_update_is_the_same_at_lambda_zero_and_above_when_the_term_passes_no_gradient(tmp_path, max_grad_norm):
    path = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    control = _one_sgd_step(path, 0.0, max_grad_norm, 0.0, tmp_path)
    treatment = _one_sgd_step(path, 3.0, max_grad_norm, 0.0, tmp_path)
    assert control.abs().max() > 0
    assert torch.allclose(control, treatment, rtol=1e-5, atol=1e-9)
    if max_grad_norm < 1:  # clipped: the step is max_grad_norm long
        assert float(control.norm()) == pytest.approx(max_grad_norm, rel=1e-3)


def test_each_term_is_clipped_on_its_own_not_their_sum(tmp_path):
    """With a term whose gradient is large, the update is -(clip(g_own) + clip(lambda g_term)): the
    control's step plus a second step of length max_grad_norm.  Clipping the sum would give one step
    of length max_grad_norm, and a treatment's own-loss step shorter than its control's."""
    path = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    limit = 1e-3
    control = _one_sgd_step(path, 0.0, limit, 1.0, tmp_path)
    treatment = _one_sgd_step(path, 3.0, limit, 1.0, tmp_path)
    assert float(control.norm()) == pytest.approx(limit, rel=1e-3)
    assert float((treatment - control).norm()) == pytest.approx(limit, rel=1e-3)
    assert float(treatment.norm()) > 1.01 * limit


def test_without_clipping_the_update_is_the_gradient_of_the_sum(tmp_path):
    """max_grad_norm = 0: neither term is clipped, and the treatment's step is longer than the clip."""
    path = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    control = _one_sgd_step(path, 0.0, 0.0, 1.0, tmp_path)
    treatment = _one_sgd_step(path, 3.0, 0.0, 1.0, tmp_path)
    clipped = _one_sgd_step(path, 3.0, 1e6, 1.0, tmp_path)  # a limit never reached: the same update
    assert torch.allclose(treatment, clipped, rtol=1e-4, atol=1e-8)
    assert float((treatment - control).norm()) > 0


def test_gradient_accumulation_scales_the_term_as_the_own_loss(tmp_path):
    """Two micro-batches of 4 accumulate to the step of one batch of 8, clipped per term or not
    clipped: the own loss is a mean over the step's tokens (the model is given num_items_in_batch) and
    the term a mean over the step's rows (each micro-batch's mean divided by the accumulation steps)."""
    path = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    for limit in (1e6, 1e-3, 0.0):
        whole = _one_sgd_step(path, 3.0, limit, 1.0, tmp_path / f"whole-{limit}")
        parts = _one_sgd_step(path, 3.0, limit, 1.0, tmp_path / f"parts-{limit}", batch_size=4, accumulation=2)
        assert torch.allclose(whole, parts, rtol=1e-3, atol=1e-7), float((whole - parts).abs().max())
