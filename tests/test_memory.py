"""The probe's memory model (fastmi.probe.memory): its terms, the group sizing the probe and the planner share."""

from __future__ import annotations

import pytest
import torch

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.probe.memory import (
    LOGIT_BLOCK_BYTES,
    ProbeMemory,
    format_bytes,
    layer_groups,
    layers_per_group,
    parse_bytes,
    probe_parameters_per_layer,
)
from fastmi.probe.training import probe_bytes


def test_linear_fp32_layer_bytes_term_by_term():
    n, d, m, b = 1000, 64, 500, 32
    mem = ProbeMemory(n, d, m, b)
    params = m * (d + 1)
    expected = 2 * n * d * 4 + 20 * params + 4 * b * m + 2 * 4 * b * d
    assert mem.parameters_per_layer == params == probe_parameters_per_layer(d, m)
    assert mem.layer_bytes == expected and mem.shared_bytes == 0
    assert probe_bytes(n, d, m, b) == expected  # the old name is the same model


def test_unembedding_trains_a_square_map_and_shares_the_frozen_unembedding():
    d, m = 64, 5000
    linear = ProbeMemory(100, d, m, 32)
    tuned = ProbeMemory(100, d, m, 32, probe="unembedding")
    assert tuned.parameters_per_layer == d * d + d + m
    assert tuned.shared_bytes == m * d * 4  # U once per group, fp32
    assert ProbeMemory(100, d, m, 32, probe="unembedding", precision="bf16").shared_bytes == m * d * 2
    assert tuned.layer_bytes < linear.layer_bytes
    # U is paid once: a group of 3 costs shared + 3 layers, so a budget of exactly that holds 3, not 4.
    budget = tuned.shared_bytes + 3 * tuned.layer_bytes
    assert tuned.layers_per_group(budget, 10) == 3
    assert tuned.layers_per_group(budget - 1, 10) == 2


def test_sampled_softmax_touches_k_plus_bag_columns():
    for bad in ("sampled", "sampled:0", "sampled:x", "partial"):
        with pytest.raises(ValueError, match="train_softmax"):
            ProbeMemory(100, 64, 1000, 256, train_softmax=bad)
    full = ProbeMemory(100, 64, 100_000, 256, mean_bag=20)
    sampled = ProbeMemory(100, 64, 100_000, 256, train_softmax="sampled:1024", mean_bag=20)
    assert full.trained_columns == 100_000
    assert sampled.trained_columns == 1024 + 256 * 20
    assert sampled.parameters_per_layer == full.parameters_per_layer  # W and Adam state stay full-size
    assert (
        sampled.temporary_bytes
        == 4 * 256 * sampled.trained_columns + 2 * 4 * sampled.trained_columns * 64 + 2 * 4 * 256 * 64
    )
    # K + the bag can never exceed the alphabet
    assert ProbeMemory(100, 64, 3000, 256, train_softmax="sampled:2048", mean_bag=20).trained_columns == 3000


def test_bf16_costs_a_working_copy_and_logit_blocks_are_bounded():
    fp32 = ProbeMemory(10, 8192, 128_256, 8192)
    bf16 = ProbeMemory(10, 8192, 128_256, 8192, precision="bf16")
    assert bf16.state_bytes - fp32.state_bytes == 2 * fp32.parameters_per_layer
    assert fp32.temporary_bytes == LOGIT_BLOCK_BYTES + 2 * 4 * 8192 * 8192  # not 4 * B * M = 4.2 GB
    with pytest.raises(ValueError, match="precision"):
        ProbeMemory(10, 8, 8, 8, precision="fp8")
    with pytest.raises(ValueError, match="probe"):
        ProbeMemory(10, 8, 8, 8, probe="mlp")


def test_group_sizing_and_groups():
    mem = ProbeMemory(500, 32, 200, 64)
    per = mem.layer_bytes
    assert layers_per_group(5 * per, 12, 500, 32, 200, 64) == 5
    assert layers_per_group(5 * per - 1, 12, 500, 32, 200, 64) == 4
    assert layers_per_group(100 * per, 12, 500, 32, 200, 64) == 12  # never more than there are layers
    assert layers_per_group(1, 12, 500, 32, 200, 64) == 1  # one layer at a time at worst
    assert not mem.fits(per - 1) and mem.fits(per)
    assert layer_groups([0, 2, 4, 6, 8], 2) == [[0, 2], [4, 6], [8]]


def test_the_probe_groups_layers_with_this_model():
    n, d, m, layers = 120, 16, 40, 5
    generator = torch.Generator().manual_seed(3)
    embeddings = {layer: torch.randn(n, d, generator=generator) for layer in range(layers)}
    token_lists = [[int(t) for t in torch.randint(0, m, (6,), generator=generator)] for _ in range(n)]
    targets = BagTargets.from_token_lists(token_lists, vocab_size=m)
    batch = fastmi.probe.recoverability.TrainConfig().batch_size
    per = ProbeMemory(n, d, m, batch).layer_bytes  # the alphabet is M = 40 here ("full", nothing excluded)
    result = fastmi.recoverability(
        embeddings,
        targets=targets,
        vocab_size=m,
        vocab="full",
        max_memory=2 * per,
        train=fastmi.probe.recoverability.TrainConfig(max_epochs=1),
        n_bootstrap=100,
        progress=False,
    )
    assert result.config["alphabet_size"] == m
    assert result.config["layer_groups"] == [[0, 1], [2, 3], [4]]


def test_parse_and_format_bytes():
    assert parse_bytes("141GB") == 141 * 10**9
    assert parse_bytes("80 GiB") == 80 * 2**30
    assert parse_bytes("1.5TB") == 1_500_000_000_000
    assert parse_bytes(1024) == 1024
    for bad in ("lots", "-3GB", "12XB", 0):
        with pytest.raises(ValueError, match="memory size"):
            parse_bytes(bad)
    assert format_bytes(2.65e11) == "265 GB" and format_bytes(512) == "512 B"
