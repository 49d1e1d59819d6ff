"""RecoverabilityLoss under the settings of real training code, each held against a plain fp32 torch
reference: mixed dtypes and bf16 autocast, torch.compile, gradient checkpointing, several layers,
bags built from input_ids, state_dict round trip.  (DDP: tests/test_loss_ddp.py.)"""

from __future__ import annotations

import itertools

import pytest
import torch

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.data.input_bags import bags_from_input_ids
from fastmi.finetune.loss import MultiLayerRecoverabilityLoss
from fastmi.kernels.reference import bag_cross_entropy_reference, masked_pool_reference

V, D, SPECIAL = 40, 12, (1, 2)


def batch(B=5, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    ids[0, 0], ids[2, 4] = 1, 2  # special ids: left out of the bags
    ids[1, 7] = 0  # a padded position
    return torch.randn(B, T, D, generator=g), mask, ids


def random_probe(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def reference_bags(ids, mask):
    rows = [ids[b][mask[b].bool()].tolist() for b in range(ids.shape[0])]
    return BagTargets.from_token_lists(rows, exclude=SPECIAL, vocab_size=V)


def reference_loss(hidden, mask, ids, weight, bias, pooling="mean"):
    """Plain fp32 torch: pool, materialise every logit, bag cross-entropy."""
    tokens = torch.nn.functional.layer_norm(hidden.float(), hidden.shape[-1:])  # the default normalize=True
    z = masked_pool_reference(tokens, mask, pooling)
    return bag_cross_entropy_reference(z, weight.float(), bias.float(), reference_bags(ids, mask))


# ---- bags from input_ids ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bags_from_input_ids_equal_the_host_construction(seed):
    _, mask, ids = batch(B=7, T=11, seed=seed)
    mask[4] = 0  # an empty row
    got = bags_from_input_ids(ids, mask, SPECIAL, V)
    want = reference_bags(ids, mask)
    for name in ("offsets", "ids", "counts"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_bags_from_input_ids_treat_negative_ids_as_masked_and_check_the_vocabulary():
    ids = torch.tensor([[5, -100, 5, 7], [3, 3, -100, -100]])
    bags = bags_from_input_ids(ids, None)
    assert bags.offsets.tolist() == [0, 2, 3] and bags.ids.tolist() == [5, 7, 3] and bags.counts.tolist() == [2, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        bags_from_input_ids(ids, None, vocab_size=6)


# ---- dtypes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden_dtype,probe_dtype", list(itertools.product([torch.float32, torch.bfloat16], repeat=2)))
def test_any_mix_of_dtypes_gives_the_fp32_reference_of_the_inputs(hidden_dtype, probe_dtype):
    hidden, mask, ids = batch()
    hidden = hidden.to(hidden_dtype).requires_grad_()
    loss_fn = random_probe(fastmi.RecoverabilityLoss(D, V, exclude_ids=SPECIAL)).to(probe_dtype)
    loss = loss_fn(hidden, mask, ids)
    assert loss.dtype == torch.float32
    loss.backward()

    ref_h = hidden.detach().float().requires_grad_()
    ref_w = loss_fn.weight.detach().float().requires_grad_()
    ref_b = loss_fn.bias.detach().float().requires_grad_()
    expected = reference_loss(ref_h, mask, ids, ref_w, ref_b)
    expected.backward()
    assert torch.allclose(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
    # Gradients come back in each input's own dtype: equal to the fp32 ones rounded to it.
    for got, want in ((hidden.grad, ref_h.grad), (loss_fn.weight.grad, ref_w.grad), (loss_fn.bias.grad, ref_b.grad)):
        assert got.dtype == (hidden_dtype if got is hidden.grad else probe_dtype)
        tol = 1e-5 if got.dtype == torch.float32 else 1e-2
        assert torch.allclose(got.float(), want, rtol=tol, atol=tol)


def test_bf16_autocast_model_gives_the_reference_of_its_hidden_states():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.GELU())
    hidden, mask, ids = batch()
    loss_fn = random_probe(fastmi.RecoverabilityLoss(D, V, exclude_ids=SPECIAL))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = block(hidden)
        assert h.dtype == torch.bfloat16  # the model really runs in bf16
        h.retain_grad()
        loss = loss_fn(h, mask, ids)
    loss.backward()
    ref_h = h.detach().float().requires_grad_()
    ref_w, ref_b = (p.detach().clone().requires_grad_() for p in (loss_fn.weight, loss_fn.bias))
    expected = reference_loss(ref_h, mask, ids, ref_w, ref_b)
    expected.backward()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(loss_fn.weight.grad, ref_w.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(h.grad.float(), ref_h.grad, rtol=1e-2, atol=1e-4)


# ---- multi-layer and state_dict ------------------------------------------------------------------
def test_multi_layer_loss_is_the_weighted_sum_of_per_layer_references():
    states = [batch(seed=s)[0].requires_grad_() for s in range(4)]
    _, mask, ids = batch()
    loss_fn = MultiLayerRecoverabilityLoss(D, V, layers=[1, 3], layer_weights=[0.25, 2.0], exclude_ids=SPECIAL)
    random_probe(loss_fn)
    loss = loss_fn(states, mask, ids)
    loss.backward()
    ref_states = [s.detach().clone().requires_grad_() for s in states]
    p1, p3 = loss_fn.probes["1"], loss_fn.probes["3"]
    expected = 0.25 * reference_loss(
        ref_states[1], mask, ids, p1.weight.detach(), p1.bias.detach()
    ) + 2.0 * reference_loss(ref_states[3], mask, ids, p3.weight.detach(), p3.bias.detach())
    expected.backward()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-5)
    assert states[0].grad is None and states[2].grad is None
    for layer in (1, 3):
        assert torch.allclose(states[layer].grad, ref_states[layer].grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not among"):
        MultiLayerRecoverabilityLoss(D, V, layers=[5])(states, mask, ids)


def test_state_dict_round_trips():
    hidden, mask, ids = batch()
    source = random_probe(
        MultiLayerRecoverabilityLoss(D, V, layers=[0, 2], layer_weights=[1.0, 3.0], exclude_ids=SPECIAL)
    )
    copy = MultiLayerRecoverabilityLoss(D, V, layers=[0, 2], exclude_ids=SPECIAL)
    copy.load_state_dict(source.state_dict())
    states = [hidden, hidden * 2, hidden - 1]
    assert torch.equal(copy(states, mask, ids), source(states, mask, ids))
    assert copy.layer_weights.tolist() == [1.0, 3.0]
    assert set(source.state_dict()) == {
        "layer_weights",
        "probes.0.weight",
        "probes.0.bias",
        "probes.2.weight",
        "probes.2.bias",
    }


# ---- torch.compile -------------------------------------------------------------------------------
class _TinyEncoder(torch.nn.Module):
    """Embedding + one block + the loss: the calling module that gets compiled."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, D)
        self.block = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.Tanh())
        self.recover = random_probe(fastmi.RecoverabilityLoss(D, V, exclude_ids=SPECIAL))

    def forward(self, ids, mask):
        h = self.block(self.embed(ids))
        return self.recover(h, mask, ids) + 0.01 * h.pow(2).mean()


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters()}


def test_torch_compile_of_the_calling_module_matches_eager():
    torch.manual_seed(0)
    eager = _TinyEncoder()
    compiled_module = _TinyEncoder()
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module)
    for seed in (0, 1):  # a second batch with another bag layout: no failure, same results
        _, mask, ids = batch(seed=seed)
        for m in (eager, compiled_module):
            m.zero_grad()
        want = eager(ids, mask)
        want.backward()
        got = compiled(ids, mask)
        got.backward()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        for name, grad in _grads(eager).items():
            assert torch.allclose(_grads(compiled_module)[name], grad, rtol=1e-4, atol=1e-6), name


# ---- gradient checkpointing ------------------------------------------------------------------------
def test_gradient_checkpointing_of_a_transformers_model_gives_the_same_gradients(tmp_path):
    from transformers import AutoModel

    from tests.tiny import make_tiny_model

    path = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=3)
    models = [AutoModel.from_pretrained(path).train() for _ in range(2)]
    models[1].gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _, mask, ids = batch(T=8)
    ids = ids.clamp(max=120)
    losses, grads = [], []
    for model in models:
        loss_fn = random_probe(MultiLayerRecoverabilityLoss(16, 126, layers=[1, 2], exclude_ids=SPECIAL))
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        loss = loss_fn(out.hidden_states, mask, ids)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert models[1].is_gradient_checkpointing
    assert torch.allclose(losses[0], losses[1], rtol=1e-6)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for name in grads[0]:
        assert torch.allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7), name
