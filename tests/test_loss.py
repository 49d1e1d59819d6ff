"""RecoverabilityLoss: equals the bag cross-entropy of the pooled state, and trains a model."""

from __future__ import annotations

import pytest
import torch

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.kernels.reference import bag_cross_entropy_reference, masked_pool_reference


def batch(B=4, T=7, d=8, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    ids[0, 0] = 1  # a special token: excluded from the bag
    return torch.randn(B, T, d, generator=g), mask, ids


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
def test_loss_equals_reference(pooling, normalize):
    hidden, mask, ids = batch()
    hidden = hidden * 3 + 1  # off zero mean and unit scale, so the normalisation does something
    loss = fastmi.RecoverabilityLoss(8, 20, pooling=pooling, exclude_ids=[1], normalize=normalize)
    with torch.no_grad():
        loss.weight.normal_()
        loss.bias.normal_()
    rows = [ids[b][mask[b].bool()].tolist() for b in range(4)]
    bags = BagTargets.from_token_lists(rows, exclude=[1], vocab_size=20)
    if normalize:  # each token: zero mean, unit variance (biased), eps 1e-5; then pooled
        hidden = (hidden - hidden.mean(-1, keepdim=True)) / torch.sqrt(
            hidden.var(-1, unbiased=False, keepdim=True) + 1e-5
        )
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


def test_normalised_probe_trains_stably_on_massive_activations():
    """A sink token with one coordinate in the thousands, as in decoder residual streams: Adam on
    the raw pooled state overshoots by many nats before it recovers; on normalised tokens the
    loss falls from the first steps."""
    torch.manual_seed(0)
    d, vocab = 32, 50
    hidden, mask, ids = batch(B=16, T=6, d=d, vocab=vocab, seed=2)
    hidden[:, 0, 0] += 6000.0 + 300 * torch.randn(16)
    curves = {}
    for normalize in (False, True):
        loss_fn = fastmi.RecoverabilityLoss(d, vocab, exclude_ids=[1], normalize=normalize)
        optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
        curves[normalize] = []
        for _ in range(60):
            loss = loss_fn(hidden, mask, ids)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            curves[normalize].append(float(loss.detach()))
    start = curves[True][0]
    assert max(curves[True]) <= start + 1e-4 and curves[True][-1] < start - 1.5  # never above the start, learnt
    assert max(curves[False]) > start + 5.0  # raw: overshoots by many nats
    assert curves[True][-1] < curves[False][-1]
