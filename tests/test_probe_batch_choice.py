"""The probe batch the planner names on a GPU: the smallest power of two from 256 at which a step's
matmuls take at least as long as its optimizer pass over W, within the caps."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fastmi.models.shape import model_shape
from fastmi.planning.hardware import detect_hardware
from fastmi.planning.probe_cost import (
    MIN_STEPS_PER_EPOCH,
    compute_bound_batch,
    optimizer_passes,
)
from fastmi.planning.workload import synthetic_workload
from fastmi.probe.memory import ProbeMemory
from tests.test_plan import LLAMA_70B


@pytest.fixture(scope="module")
def shape(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama70b") / "config.json"
    path.write_text(json.dumps(LLAMA_70B))
    return model_shape(path)


def _step_seconds(memory: ProbeMemory, hw) -> tuple[float, float]:
    """(matmul, optimizer) seconds of one step, as the planner's cost model counts them."""
    matmul = memory.batch_size * 6.0 * memory.dim * memory.trained_columns / hw.probe_flops(memory.precision)
    optimizer = optimizer_passes(memory.probe, hw.device) * memory.parameters_per_layer / hw.elementwise_rate
    return matmul, optimizer


def _setting(shape, gpu="h100", probe="embedding", precision="bf16", sentences=100_000, train_softmax="full"):
    work = synthetic_workload(shape, sentences, 32, 128, "full")
    hw = detect_hardware(1, gpu=gpu)
    memory = ProbeMemory(
        work.probe_rows,
        shape.hidden_size,
        work.alphabet_size,
        precision=precision,
        probe=probe,
        train_softmax=train_softmax,
    )
    return memory, work, hw


@pytest.mark.parametrize("gpu", ["h100", "h200", "a100-80gb"])
@pytest.mark.parametrize("probe", ["embedding", "linear", "auto"])
def test_the_batch_is_the_smallest_power_of_two_at_which_the_matmuls_outlast_the_optimizer(shape, gpu, probe):
    memory, work, hw = _setting(shape, gpu, probe)
    batch = compute_bound_batch(memory, work, hw, budget=10**15)
    assert batch > 256 and batch & (batch - 1) == 0
    matmul, optimizer = _step_seconds(replace(memory, batch_size=batch), hw)
    assert matmul >= optimizer
    matmul, optimizer = _step_seconds(replace(memory, batch_size=batch // 2), hw)
    assert matmul < optimizer


def test_the_anchor_pass_of_the_embedding_probe_asks_for_at_least_the_linear_probes_batch(shape):
    linear, work, hw = _setting(shape, probe="linear")
    embedding, _, _ = _setting(shape, probe="embedding")
    assert compute_bound_batch(embedding, work, hw, 10**15) >= compute_bound_batch(linear, work, hw, 10**15)
    assert optimizer_passes("embedding", "cuda") > optimizer_passes("linear", "cuda")


def test_fp32_products_are_slow_enough_to_be_compute_bound_at_the_default(shape):
    memory, work, hw = _setting(shape, precision="fp32")
    assert compute_bound_batch(memory, work, hw, 10**15) == 256


@pytest.mark.parametrize(
    "change", [dict(probe="unembedding"), dict(train_softmax="sampled:8192")], ids=["unembedding", "sampled"]
)
def test_probes_whose_optimizer_pass_is_small_keep_the_default(shape, change):
    memory, work, hw = _setting(shape, **change)
    assert compute_bound_batch(memory, work, hw, 10**15) == 256


def test_a_cpu_keeps_the_default(shape):
    memory, work, _ = _setting(shape)
    cpu = detect_hardware(0, gpu_memory=10**12, matmul_flops=1e12)
    assert compute_bound_batch(memory, work, cpu, 10**15) == 256


def test_an_epoch_keeps_its_minimum_of_steps_and_the_batch_its_memory(shape):
    memory, work, hw = _setting(shape, sentences=20_000)
    batch = compute_bound_batch(memory, work, hw, 10**15)
    assert work.train_rows // batch >= MIN_STEPS_PER_EPOCH
    assert compute_bound_batch(memory, work, hw, budget=memory.shared_bytes + memory.layer_bytes) == 256
