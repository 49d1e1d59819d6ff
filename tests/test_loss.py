"""RecoverabilityLoss: equals the bag cross-entropy of the pooled state, and trains a model."""

from __future__ import annotations

import pytest
import torch

import fastmi
from fastmi.bags import BagTargets
from fastmi.kernels.reference import bag_cross_entropy_reference, masked_pool_reference


def batch(B=4, T=7, d=8, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    ids[0, 0] = 1  # a special token: excluded from the bag
    return torch.randn(B, T, d, generator=g), mask, ids


@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
def test_loss_equals_reference(pooling):
    hidden, mask, ids = batch()
    loss = fastmi.RecoverabilityLoss(8, 20, pooling=pooling, exclude_ids=[1])
    with torch.no_grad():
        loss.weight.normal_()
        loss.bias.normal_()
    rows = [ids[b][mask[b].bool()].tolist() for b in range(4)]
    bags = BagTargets.from_token_lists(rows, exclude=[1], vocab_size=20)
    z = masked_pool_reference(hidden, mask, pooling)
    expected = bag_cross_entropy_reference(z, loss.weight, loss.bias, bags)
    assert torch.allclose(loss(hidden, mask, ids), expected, atol=1e-5)
    assert torch.allclose(loss(hidden, mask, bags), expected, atol=1e-5)


def test_gradient_reaches_a_tiny_model_and_lowers_the_loss():
    torch.manual_seed(0)
    vocab, d = 20, 16
    embed = torch.nn.Embedding(vocab, d)
    block = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.Tanh())
    loss_fn = fastmi.RecoverabilityLoss(d, vocab, exclude_ids=[1])
    params = [*embed.parameters(), *block.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.5)
    _, mask, ids = batch(B=8, T=6, d=d, vocab=vocab, seed=1)
    losses = []
    for step in range(30):
        loss = loss_fn(block(embed(ids)), mask, ids)
        optimizer.zero_grad()
        loss.backward()
        # Step 0 moves only the zero-initialised probe; from then on the model gets gradient too.
        if step == 1:
            assert embed.weight.grad is not None and embed.weight.grad.abs().sum() > 0
            assert block[0].weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(vocab))).item(), rel=1e-5)
    assert losses[-1] < losses[0] - 0.5


def test_loss_rejects_mismatched_inputs():
    hidden, mask, ids = batch()
    loss = fastmi.RecoverabilityLoss(8, 20)
    with pytest.raises(ValueError, match="hidden must be"):
        loss(hidden[..., :5], mask, ids)
    with pytest.raises(ValueError, match="rows"):
        loss(hidden, mask, BagTargets.from_token_lists([[3]], vocab_size=20))
    with pytest.raises(ValueError, match="pooling"):
        fastmi.RecoverabilityLoss(8, 20, pooling="median")
