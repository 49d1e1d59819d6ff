"""The seconds of an extraction and the bytes of its cache, from a model of the work (docs/scaling.md).

2 FLOPs per weight a token meets in the blocks up to the deepest tapped layer, plus attention, at
the matmul rate, plus one small-operation cost per op of each block of each batch (what dominates
small models on a CPU), plus the pooling of every tapped layer, the cache files (shards, targets,
the output embedding) at the target's disk rate and, once per process, the tokenization (timed on
the corpus) and the check of the taps.
"""

from __future__ import annotations

import math

from fastmi.models.shape import ModelShape
from fastmi.planning.hardware import Hardware
from fastmi.planning.placement import Placement
from fastmi.planning.workload import Workload
from fastmi.probe.memory import CACHE_DTYPE_BYTES

__all__ = ["cache_bytes", "extraction_seconds", "targets_bytes"]

OPS_PER_BLOCK = 24  # torch operations one transformer block's forward dispatches (norms, projections, ...)
# Per tapped layer and batch (fastmi.models.hooks.LayerPooler, fastmi.activations.extraction._Run.shard): the
# mask weights, their count, the pooling product and division, the copy to the host, the finiteness check, the store.
POOL_OPS_PER_LAYER = 8
ELEMENTWISE_PER_WEIGHT_ROW = 3  # elementwise passes per token and block: 3 x (block weights / d) elements
ATTENTION_PASSES = 5  # scale, mask, max, exp, sum over each token's [heads, context] scores
OFFLOAD_BANDWIDTH = {"cpu": 25e9, "disk": 2e9}  # bytes/s a weight transfer gets from host RAM / NVMe


def extraction_seconds(
    shape: ModelShape,
    hw: Hardware,
    work: Workload,
    placement: Placement,
    flops: float,
    blocks: int,
    taps: int,
    cache_dtype: str,
) -> float:
    """The forward passes, the pooling of every tapped layer, and the cache files (module docstring).

    Shards are split over the replicas; every process tokenizes the corpus and checks its taps on a
    few sentences, and one writes the targets and the output embedding."""
    batches = math.ceil(work.sentences / placement.batch_size)
    per_token = (
        ELEMENTWISE_PER_WEIGHT_ROW * max(shape.block_parameters) / shape.hidden_size
        + ATTENTION_PASSES * shape.num_heads * work.mean_width
    )
    tokens_per_batch = int(placement.batch_size * work.mean_width)
    rate = hw.matmul_rate(tokens_per_batch, shape.hidden_size, 4 * shape.hidden_size)  # the MLP's shape
    compute = (
        flops / rate
        + work.padded_tokens * blocks * per_token / hw.elementwise_rate
        + batches * blocks * OPS_PER_BLOCK * hw.op_seconds
    )
    # Each tapped layer's hidden states are read once to pool them, then copied out and checked.
    pooling = (
        work.padded_tokens * taps * shape.hidden_size / hw.elementwise_rate
        + batches * taps * POOL_OPS_PER_LAYER * hw.op_seconds
    )
    shards = work.sentences * taps * (shape.hidden_size * CACHE_DTYPE_BYTES[cache_dtype] + 8) * hw.file_seconds
    shared_files = (4 * shape.vocab_size * shape.hidden_size + targets_bytes(work)) * hw.file_seconds
    verify = 2 * blocks * OPS_PER_BLOCK * hw.op_seconds  # two forwards of a few sentences, taps against hidden_states
    transfer = 0.0
    if placement.offload:
        rate = OFFLOAD_BANDWIDTH["disk" if "disk" in placement.offload else "cpu"]
        transfer = batches * placement.offloaded_bytes / rate  # every batch streams the offloaded weights
    once = work.tokenize_seconds + shared_files + verify
    return (compute + pooling + shards + transfer) / placement.replicas + once


def cache_bytes(work: Workload, shape: ModelShape, num_layers: int, cache_dtype: str) -> int:
    """Shards (values + int64 row ids per layer) and the targets file (int64 ids, counts, offsets)."""
    values = work.sentences * num_layers * (shape.hidden_size * CACHE_DTYPE_BYTES[cache_dtype] + 8)
    return int(values + targets_bytes(work))


def targets_bytes(work: Workload) -> int:
    """The targets file: int64 ids and counts per bag entry; offsets, row ids and lengths per sentence."""
    return int(16 * work.sentences * work.mean_bag + 24 * work.sentences)
