"""The probe's memory, layer groups and seconds per epoch, from a model of the work (docs/scaling.md).

On a CPU measured here the default probe (linear, full softmax) is timed on its own code at the
work's shape (step, validation chunk, epoch bookkeeping; :func:`probe_seconds_timed`).  Otherwise
it is counted: 6 B d S FLOPs per layer for training (4 B d S + 4 B d^2 through the frozen
unembedding), S = M or K + the batch's bag ids with ``sampled:K``, plus the exact full-vocabulary
validation pass, plus the elementwise passes over logits and Adam's over the trainable state.
Each group's set-up (new parameters and moments, the first validation pass) is counted once per run.
Memory comes from :mod:`fastmi.probe.memory`, the same function that sizes the probe's layer groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fastmi.models.shape import ModelShape
from fastmi.planning.hardware import Hardware
from fastmi.planning.workload import Workload
from fastmi.probe.checks import AUTO_FORMS
from fastmi.probe.memory import STATE_BYTES, ProbeMemory, layer_groups

__all__ = [
    "PROBE_BUDGET_FRACTION",
    "ProbeEstimate",
    "compute_bound_batch",
    "compute_bound_estimate",
    "estimate_probe",
    "probe_epoch",
    "probe_seconds_timed",
]

PROBE_BUDGET_FRACTION = 0.5  # the probe's default max_memory: half of the device memory (fastmi.probe.recoverability)
TRAIN_BATCH_SIZE = 256  # TrainConfig().batch_size
VALIDATION_CHUNK_STEPS = 0.6  # fixed cost of a validation chunk (forward only) in probe steps
EPOCH_FIXED_STEPS = 3  # per epoch: shuffling, the validation bookkeeping, the best-copy update
# Elementwise passes (an fp32 read and write) one AdamW update makes per trainable parameter.  On a
# CPU: 7 operations (lerp, mul, addcmul, sqrt, div, add, addcdiv), each reading or writing ~3 of value,
# gradient, moments and temporaries.  On CUDA, torch's fused kernel (fastmi/probe/adamw.py) reads the
# value, gradient and both moments and writes three of them once (3.5 passes), after the backward has
# written the gradient (0.5).  The embedding probe's pull toward its start (p.lerp_(anchor)) adds 1.5.
ADAM_PASSES = {"cpu": 20.0, "cuda": 4.0}
ANCHOR_PASSES = 1.5
# The probe batch on a GPU (:func:`compute_bound_batch`): powers of two from the default up to this,
# keeping at least MIN_STEPS_PER_EPOCH steps in an epoch, so early stopping still sees many steps.
MAX_PROBE_BATCH = 8192
MIN_STEPS_PER_EPOCH = 16
BEST_COPY_PASSES = 2  # per epoch: the improved layers' weights copied into the best copy
SETUP_PASSES = 4  # per fit: W, Adam's two moments and the best copy, each written once
# The default probe on a measured CPU is timed at the work's own shape up to this many weights
# (64 MB per fp32 tensor: past the caches, so larger probes run at the same rate per weight).
TIMED_PROBE_PARAMETERS = 1 << 24
# Elementwise passes over each logit: max, subtract, exp, sum, then the gradient's scale and count terms.
# The CPU path makes them in memory; the Triton kernels keep logits on chip and write dlogits once.
LOGIT_PASSES = {"cpu": (10, 5), "cuda": (2, 0)}  # (training, validation)


@dataclass(frozen=True)
class ProbeEstimate:
    """One probe setting over the plan's layers: its memory, its groups within the budget, its cost."""

    memory: ProbeMemory
    budget: int  # bytes a device offers the probe
    groups: list[list[int]]
    flops: float  # per epoch, all groups
    seconds: float  # per epoch, the busiest device
    setup_seconds: float  # once per run, the busiest device


def estimate_probe(
    work: Workload,
    shape: ModelShape,
    hw: Hardware,
    layers: list[int],
    train_softmax: str,
    probe: str,
    precision: str,
    batch_size: int | None = None,
) -> ProbeEstimate:
    """The probe's memory, groups and cost at ``batch_size`` sentences a step (None: the default)."""
    memory = ProbeMemory(
        rows=work.probe_rows,
        dim=shape.hidden_size,
        alphabet=work.alphabet_size,
        batch_size=batch_size or TRAIN_BATCH_SIZE,
        precision=precision,
        train_softmax=train_softmax,
        probe=probe,
        mean_bag=work.mean_bag,
    )
    budget = int(hw.memory * PROBE_BUDGET_FRACTION)
    groups = layer_groups(layers, memory.layers_per_group(budget, len(layers)))
    flops, seconds, setup_seconds = probe_epoch(memory, work, hw, [len(g) for g in groups])
    return ProbeEstimate(memory, budget, groups, flops, seconds, setup_seconds)


def optimizer_passes(probe: str, device: str) -> float:
    """Elementwise passes of one AdamW step per trainable parameter of ``probe`` on ``device``."""
    return ADAM_PASSES[device] + (ANCHOR_PASSES if probe in ("embedding", "auto") else 0.0)


def compute_bound_batch(memory: ProbeMemory, work: Workload, hw: Hardware, budget: int) -> int:
    """The probe batch at which a training step on a GPU is bound by its matmuls, not its optimizer.

    A step's matmuls cost 6 B d S FLOPs (B rows against the S trained columns) and its AdamW pass a
    fixed number of elementwise passes over the M (d + 1) weights, whatever B is.  At B = 256 and a
    GPU's rates the optimizer's pass is the larger (docs/scaling.md), so the epoch is paid
    mostly in optimizer passes, one per step.  The batch named is the smallest power of two from
    ``memory``'s at which the matmuls take at least as long as the optimizer pass, capped at
    :data:`MAX_PROBE_BATCH`, at :data:`MIN_STEPS_PER_EPOCH` steps an epoch and at the memory budget.
    A CPU (compute-bound already), the sampled softmax (whose steps touch S rows, not M) and the
    unembedding probe (d^2 weights) keep ``memory``'s batch.  The plan prices it beside the run's
    own batch, not instead of it: on the demo caches a larger batch ended with looser bounds
    (docs/performance.md)."""
    if hw.device != "cuda" or memory.train_softmax != "full" or memory.probe == "unembedding":
        return memory.batch_size
    flops_per_row = 6.0 * memory.dim * memory.trained_columns
    optimizer = optimizer_passes(memory.probe, hw.device) * memory.parameters_per_layer / hw.elementwise_rate
    ceiling = min(MAX_PROBE_BATCH, work.train_rows // MIN_STEPS_PER_EPOCH)
    batch, fits = memory.batch_size, memory.fits(budget)
    while batch * flops_per_row / hw.probe_flops(memory.precision) < optimizer and 2 * batch <= ceiling:
        if fits and not replace(memory, batch_size=2 * batch).fits(budget):
            break  # a larger batch would not fit where this one does
        batch *= 2
    return batch


def compute_bound_estimate(chosen: ProbeEstimate, work: Workload, shape: ModelShape, hw: Hardware) -> ProbeEstimate:
    """``chosen``'s setting priced at its :func:`compute_bound_batch` (``chosen`` where that is its batch)."""
    memory = chosen.memory
    batch = compute_bound_batch(memory, work, hw, chosen.budget)
    if batch == memory.batch_size:
        return chosen
    layers = [layer for group in chosen.groups for layer in group]
    return estimate_probe(work, shape, hw, layers, memory.train_softmax, memory.probe, memory.precision, batch)


def probe_epoch(
    memory: ProbeMemory, work: Workload, hw: Hardware, group_sizes: list[int]
) -> tuple[float, float, float]:
    """(FLOPs, seconds) of one epoch over all groups, and the seconds of the groups' set-up (their
    parameters, Adam's moments, the best copy and the first validation pass, once per run); groups
    go round-robin to the devices (one rank each).

    The default probe (linear, full softmax) on a CPU whose rates are measured here is timed on its
    own code at the work's shape (:func:`probe_seconds_timed`); every other case is counted:
    FLOPs at the matmul rate, elementwise passes at the elementwise rate, a fixed cost per step.
    """
    if memory.probe == "auto":  # its first fit trains both forms, each epoch of one then the other
        both = [probe_epoch(replace(memory, probe=form), work, hw, group_sizes) for form in AUTO_FORMS]
        return tuple(sum(parts) for parts in zip(*both))
    d, m, s = memory.dim, memory.alphabet, memory.trained_columns
    train, val = work.train_rows, work.validation_rows
    if memory.probe == "unembedding":
        layer_flops = train * (4.0 * d * s + 4.0 * d * d) + val * (2.0 * d * m + 2.0 * d * d)
        validation_flops = val * (2.0 * d * m + 2.0 * d * d)
    else:
        layer_flops = 6.0 * train * d * s + 2.0 * val * d * m
        validation_flops = 2.0 * val * d * m
    flops = layer_flops * sum(group_sizes)
    workers = [(0.0, 0.0)] * (hw.count if hw.device == "cuda" else 1)
    # A group's parameters, gradients, moments and best copy are new memory, written first in its set-up.
    fresh = STATE_BYTES[memory.precision] * memory.parameters_per_layer * hw.fresh_memory_seconds
    if hw.measured and memory.probe in ("linear", "embedding") and memory.train_softmax == "full":
        for i, (epoch, setup) in enumerate(probe_seconds_timed(memory, work, hw, group_sizes)):
            done = workers[i % len(workers)]
            workers[i % len(workers)] = (done[0] + epoch, done[1] + setup + fresh * group_sizes[i])
        return flops, max(w[0] for w in workers), max(w[1] for w in workers)
    steps = math.ceil(train / memory.batch_size)
    chunks = math.ceil(val / memory.batch_size)
    train_passes, val_passes = LOGIT_PASSES[hw.device]
    elements = (
        train * s * train_passes
        + val * m * val_passes
        + (steps * optimizer_passes(memory.probe, hw.device) + BEST_COPY_PASSES) * memory.parameters_per_layer
    )
    setup_elements = val * m * val_passes + SETUP_PASSES * memory.parameters_per_layer
    rate = hw.probe_flops(memory.precision)
    if hw.measured:  # the fused bag CE's row blocks of the batch against the alphabet
        rate = hw.matmul_rate(min(memory.batch_size, train), d, s)
    for i, size in enumerate(group_sizes):
        fixed, per_layer = hw.probe_step_seconds
        overhead = (steps + VALIDATION_CHUNK_STEPS * chunks + EPOCH_FIXED_STEPS) * (fixed + per_layer * size)
        seconds = size * (layer_flops / rate + elements / hw.elementwise_rate) + overhead
        setup = size * (validation_flops / rate + setup_elements / hw.elementwise_rate)
        setup += VALIDATION_CHUNK_STEPS * chunks * (fixed + per_layer * size) + fresh * size
        done = workers[i % len(workers)]
        workers[i % len(workers)] = (done[0] + seconds, done[1] + setup)
    return flops, max(w[0] for w in workers), max(w[1] for w in workers)


def probe_seconds_timed(
    memory: ProbeMemory, work: Workload, hw: Hardware, group_sizes: list[int]
) -> list[tuple[float, float]]:
    """(seconds per epoch, set-up seconds) of each group, from the probe's step, validation chunk,
    epoch bookkeeping and set-up timed on this CPU (:meth:`Hardware.probe_costs`).

    They are timed at the work's shape: the largest group's layers, the alphabet, the step's and
    the validation chunk's rows.  Where that holds more than :data:`TIMED_PROBE_PARAMETERS` weights,
    fewer layers (then fewer ids) are timed and the costs scaled by the weights, but for the fixed
    cost of a step (:attr:`Hardware.probe_step_seconds`).  An epoch has ceil(train / batch) steps and
    ceil(validation / batch) validation chunks, as :func:`fastmi.probe.training.fit_probes` runs them.
    """
    d, m = memory.dim, memory.alphabet
    train, val, batch = work.train_rows, work.validation_rows, memory.batch_size
    steps, chunks = math.ceil(train / batch), math.ceil(val / batch)
    layers = min(max(group_sizes), max(1, TIMED_PROBE_PARAMETERS // (m * d)))
    columns = min(m, max(1, TIMED_PROBE_PARAMETERS // (layers * d)))
    costs = hw.probe_costs(layers, min(batch, train), d, columns, min(batch, val), work.mean_bag)
    fixed, per_layer = hw.probe_step_seconds
    out = []
    for size in group_sizes:
        scale = size * m / (layers * columns)
        step = fixed + per_layer * size + max(0.0, costs.step - fixed - per_layer * layers) * scale
        validation = costs.validation_chunk * scale
        epoch = steps * step + chunks * validation + costs.epoch * scale
        out.append((epoch, costs.setup * scale + chunks * validation))
    return out
