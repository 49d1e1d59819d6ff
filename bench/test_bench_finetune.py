"""CPU benchmark: what RecoverabilityLoss adds to a training step, at the demo's SmolLM2 shapes.

    python -m pytest bench/test_bench_finetune.py --benchmark-only

One group, timed in the same run: the model's own step (causal-LM forward + backward of a
SmolLM2-135M-shaped Llama, batch 8 x 48 tokens, vocabulary 49,152, random weights: the cost does
not depend on their values), the same step with lambda * recoverability at layer 15 added, and the
recoverability term alone on the hidden states of one step, split into its parts (bags from
input_ids, pooling, the fused bag cross-entropy with its backward).  The target is an added cost of
at most 15% of the model's step; docs/finetune.md records the measured ratios.
"""

from __future__ import annotations

import pytest
import torch

from fastmi.data.input_bags import bags_from_input_ids
from fastmi.finetune.loss import RecoverabilityLoss

BATCH, TOKENS, VOCAB, LAYER = 8, 48, 49_152, 15
SPECIAL = (0, 1, 2)


@pytest.fixture(scope="module")
def setup():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        rope_theta=100000.0,
    )
    model = LlamaForCausalLM(config).train()
    ids = torch.randint(3, VOCAB, (BATCH, TOKENS))
    mask = torch.ones(BATCH, TOKENS, dtype=torch.long)
    mask[::2, TOKENS * 2 // 3 :] = 0  # a third of the rows padded: the demo's batches are ragged
    recover = RecoverabilityLoss(576, VOCAB, exclude_ids=SPECIAL)
    with torch.no_grad():
        recover.weight.normal_(0, 0.02)
    return model, ids, mask, recover


def _own_step(model, ids, mask):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    return out.loss.detach()


def _step_with_recoverability(model, ids, mask, recover):
    model.zero_grad(set_to_none=True)
    recover.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), output_hidden_states=True)
    loss = out.loss + 0.1 * recover(out.hidden_states[LAYER], mask, ids)
    loss.backward()
    return loss.detach()


_medians: dict[str, float] = {}


def test_model_step(benchmark, setup):
    model, ids, mask, _ = setup
    benchmark.group = "training step, SmolLM2 shapes (B=8, T=48, V=49152)"
    loss = benchmark.pedantic(_own_step, args=(model, ids, mask), rounds=3, iterations=1, warmup_rounds=1)
    assert torch.isfinite(loss)
    if benchmark.stats:  # None under --benchmark-disable
        _medians["model_step"] = benchmark.stats.stats.median


def test_model_step_with_recoverability(benchmark, setup):
    model, ids, mask, recover = setup
    benchmark.group = "training step, SmolLM2 shapes (B=8, T=48, V=49152)"
    loss = benchmark.pedantic(
        _step_with_recoverability, args=(model, ids, mask, recover), rounds=3, iterations=1, warmup_rounds=1
    )
    assert torch.isfinite(loss) and recover.weight.grad is not None
    if "model_step" in _medians:  # the figure: what the term adds, as a share of the model's own step
        added = benchmark.stats.stats.median / _medians["model_step"] - 1
        benchmark.extra_info.update(added_cost_fraction_of_model_step=added, target=0.15)
        print(f"\nrecoverability adds {added:.1%} to the model's step (medians; target <= 15%)")


@pytest.mark.parametrize("part", ["whole_term", "bags", "pool", "bag_cross_entropy"])
def test_recoverability_term(benchmark, setup, part):
    _, ids, mask, recover = setup
    benchmark.group = "training step, SmolLM2 shapes (B=8, T=48, V=49152)"
    hidden = torch.randn(BATCH, TOKENS, 576, requires_grad=True)
    bags = recover.bags(ids, mask)
    z = recover.pool(hidden, mask).detach().requires_grad_()

    def whole():
        recover(hidden, mask, ids).backward()

    def pool():
        recover.pool(hidden, mask).sum().backward()

    def cross_entropy():
        recover.loss_of_pooled(z, bags).backward()

    run = {
        "whole_term": whole,
        "bags": lambda: bags_from_input_ids(ids, mask, SPECIAL, VOCAB),
        "pool": pool,
        "bag_cross_entropy": cross_entropy,
    }[part]
    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    if "model_step" in _medians:
        benchmark.extra_info["fraction_of_model_step"] = benchmark.stats.stats.median / _medians["model_step"]
    assert recover.weight.grad is None or torch.isfinite(recover.weight.grad).all()
