"""``fastmi.plan``: what a sweep of a model will cost, and whether it fits, from its config alone.

Every figure is an estimate from a model of the work (docs/scaling.md):

* extraction: 2 FLOPs per weight a token meets in the blocks up to the deepest tapped layer, plus
  attention, at the matmul rate (measured here, given, or a GPU preset's published peak at
  :data:`fastmi.planning.hardware.ACHIEVED_FRACTION`), plus one small-operation cost per op of each block of
  each batch (what dominates small models on a CPU), plus the pooling of every tapped layer, the
  cache files (shards, targets, the output embedding) at the target's disk rate and, once per
  process, the tokenization (timed here on the corpus) and the check of the taps;
* the probe, per epoch: on a CPU measured here, the default probe (linear, full softmax) timed on its
  own code at the work's shape (step, validation chunk, epoch bookkeeping; :func:`_probe_seconds_timed`);
  otherwise counted: 6 B d S FLOPs per layer for training (4 B d S + 4 B d^2 through the frozen
  unembedding), S = M or K + the batch's bag ids with ``sampled:K``, plus the exact full-vocabulary
  validation pass, plus the elementwise passes over logits and Adam's over the trainable state.
  Each group's set-up (new parameters and moments, the first validation pass) is counted once per
  run (``probe_setup_seconds``), and the whole probe (``probe_expected_seconds``) as the set-up plus
  :data:`PROBE_EPOCHS` epochs, the range early stopping ran in recorded sweeps;
* memory: :mod:`fastmi.probe.memory`, the same function that sizes the probe's layer groups;
* placement: weights in the extraction dtype need ceil(bytes * (1 + margin) / device memory) devices
  per replica; the GPUs hold gpus // that many data-parallel replicas; a model larger than all the
  GPUs of one replica is offloaded by accelerate (CPU, then disk).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.models.shape import ModelShape, model_shape
from fastmi.planning.hardware import Hardware, detect_hardware, parse_rate
from fastmi.planning.workload import Workload, corpus_workload, synthetic_workload
from fastmi.probe.memory import (
    CACHE_DTYPE_BYTES,
    STATE_BYTES,
    ProbeMemory,
    format_bytes,
    layer_groups,
)
from fastmi.probe.sampled_softmax import parse_train_softmax

__all__ = ["PROBE_EPOCHS", "Plan", "counted", "plan"]

WEIGHT_MARGIN = 0.15  # activations, buffers and fragmentation on a device that holds weights
PROBE_BUDGET_FRACTION = 0.5  # the probe's default max_memory: half of the device memory (fastmi.probe.recoverability)
OPS_PER_BLOCK = 24  # torch operations one transformer block's forward dispatches (norms, projections, ...)
# Per tapped layer and batch (fastmi.models.hooks.LayerPooler, fastmi.activations.extraction._Run.shard): the
# mask weights, their count, the pooling product and division, the copy to the host, the finiteness check, the store.
POOL_OPS_PER_LAYER = 8
ELEMENTWISE_PER_WEIGHT_ROW = 3  # elementwise passes per token and block: 3 x (block weights / d) elements
ATTENTION_PASSES = 5  # scale, mask, max, exp, sum over each token's [heads, context] scores
VALIDATION_CHUNK_STEPS = 0.6  # fixed cost of a validation chunk (forward only) in probe steps
EPOCH_FIXED_STEPS = 3  # per epoch: shuffling, the validation bookkeeping, the best-copy update
# Elements one AdamW update moves per trainable parameter: 7 operations (lerp, mul, addcmul, sqrt, div,
# add, addcdiv), each reading or writing ~3 of value, gradient, moments and temporaries.
ADAM_PASSES = 20
BEST_COPY_PASSES = 2  # per epoch: the improved layers' weights copied into the best copy
SETUP_PASSES = 4  # per fit: W, Adam's two moments and the best copy, each written once
# The default probe on a measured CPU is timed at the work's own shape up to this many weights
# (64 MB per fp32 tensor: past the caches, so larger probes run at the same rate per weight).
TIMED_PROBE_PARAMETERS = 1 << 24
# Elementwise passes over each logit: max, subtract, exp, sum, then the gradient's scale and count terms.
# The CPU path makes them in memory; the Triton kernels keep logits on chip and write dlogits once.
LOGIT_PASSES = {"cpu": (10, 5), "cuda": (2, 0)}  # (training, validation)
OFFLOAD_BANDWIDTH = {"cpu": 25e9, "disk": 2e9}  # bytes/s a weight transfer gets from host RAM / NVMe
CPU_BATCH_SIZE = 32  # fastmi.extract's default
MAX_GPU_BATCH = 1024
TRAIN_BATCH_SIZE = 256  # TrainConfig().batch_size
# The epochs early stopping ran (patience 3, at most 40) in the recorded sweeps of 10,000 sentences:
# MiniLM 13 and SmolLM2 10 on the observed alphabet (docs/findings/observed_10k/results.json), 24 and 23
# on top:512 (docs/findings/large_10k/results.json); "epochs_run" of each layer group.
PROBE_EPOCHS = (10, 24)
PROBE_EPOCHS_SOURCE = "the epochs early stopping ran in the 10,000-sentence sweeps of docs/findings"
ALTERNATIVES = (
    {"train_softmax": "sampled:8192"},
    {"probe": "unembedding"},
    {"probe": "unembedding", "train_softmax": "sampled:8192"},
)


@dataclass
class Plan:
    """A sweep's estimated cost and placement.  Every number is an estimate (see :mod:`fastmi.planning.planner`)."""

    model: str
    architecture: str
    num_layers: int
    hidden_size: int
    parameters: int
    loaded_parameters: int
    weight_bytes: int
    sentences: int
    tokens: int
    layers: list[int]
    vocab: str
    alphabet_size: int
    cache_dtype: str
    cache_bytes: int
    probe: str
    train_softmax: str
    precision: str
    probe_parameters_per_layer: int
    probe_bytes_per_layer: int
    probe_shared_bytes: int
    probe_budget_bytes: int
    layers_per_group: int
    layer_groups: int
    device: str
    gpus: int
    gpu: str | None  # the name of the preset the GPU figures come from ("H200 SXM"), if any
    device_memory: int
    host_memory: int
    host_memory_source: str  # "given", "free RAM here" or a GPU node's default
    disk_rate: float  # bytes/s one extracting process writes its cache files at
    disk_rate_source: str  # "given", "measured here" or a GPU node's default
    matmul_tflops: float
    hardware: str
    replicas: int
    devices_per_replica: int
    offload: str | None
    offloaded_bytes: int  # weight bytes (with the headroom) that do not fit on the GPUs of one replica
    extraction_batch_size: int
    probe_batch_size: int
    extraction_flops: float
    extraction_seconds: float
    probe_flops_per_epoch: float
    probe_seconds_per_epoch: float
    probe_setup_seconds: float  # once per run: every group's parameters, moments and first validation pass
    probe_epochs: tuple[int, int]  # the range of epochs early stopping ran in recorded sweeps (PROBE_EPOCHS)
    probe_expected_seconds: tuple[float, float]  # set-up + probe_epochs x the epoch: the probe's whole time
    fits: bool
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    alternatives: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def plan(
    model,
    corpus=None,
    sentences: int | None = None,
    mean_tokens: float | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    layers="all",
    vocab: str = "observed",
    cache_dtype: str = "fp32",
    gpus: int | None = None,
    gpu_memory: int | str | None = None,
    host_memory: int | str | None = None,
    matmul_tflops: float | None = None,
    train_softmax: str = "full",
    probe: str = "linear",
    precision: str = "fp32",
    batch_size: int | None = None,
    hardware: Hardware | None = None,
    model_cache_dir: str | os.PathLike | None = None,
    gpu: str | None = None,
    disk_rate: float | str | None = None,
) -> Plan:
    """Plan extracting and probing ``model`` over ``corpus`` (or ``sentences`` of ``mean_tokens``).

    ``model``: a spec as for :func:`fastmi.load_model` or a path to a ``config.json`` (only the config
    is read), or a :class:`fastmi.models.shape.ModelShape`.  ``gpus``: None plans for this machine's
    GPUs (its CPU if none; one GPU with ``gpu``), 0 for its CPU.  ``gpu_memory``/``host_memory``: bytes or "141GB".
    ``matmul_tflops``: the achieved dense matmul rate of one device in the extraction dtype (bf16 on
    GPUs); measured here if not given.  ``gpu``: a preset of published figures ("h100", "h200",
    "a100-80gb", "l40s"; :data:`fastmi.planning.hardware.GPU_PRESETS`) for the memory and the matmul rate,
    which ``gpu_memory`` and ``matmul_tflops`` override.  ``disk_rate``: bytes/s or "1GB/s" at which one
    extracting process writes its cache files on the target (measured here when planning for this
    machine; :data:`fastmi.planning.hardware.GPU_NODE_DISK_RATE` for GPUs elsewhere).  Other settings as in
    :func:`fastmi.extract` and :func:`fastmi.recoverability`.
    """
    from fastmi.activations.extraction import parse_layers
    from fastmi.probe.memory import parse_bytes

    if cache_dtype not in CACHE_DTYPE_BYTES:
        raise ValueError(f"cache_dtype must be fp32, bf16 or fp16, got {cache_dtype!r}")
    parse_train_softmax(train_softmax)
    shape = model if isinstance(model, ModelShape) else model_shape(model, model_cache_dir)
    hw = hardware or detect_hardware(
        gpus,
        parse_bytes(gpu_memory) if gpu_memory else None,
        parse_bytes(host_memory) if host_memory else None,
        matmul_tflops * 1e12 if matmul_tflops else None,
        gpu=gpu,
        disk_rate=parse_rate(disk_rate) if disk_rate else None,
    )
    wanted = parse_layers(layers, shape.num_layers)
    cpu_batch = batch_size or CPU_BATCH_SIZE
    if corpus is not None:
        work = corpus_workload(shape, corpus, max_length, vocab, cpu_batch, len(wanted), model_cache_dir)
    elif sentences:
        work = synthetic_workload(shape, sentences, mean_tokens, max_length, vocab)
    else:
        raise ValueError("give a corpus, or sentences=N (with mean_tokens) to plan for")
    _check_sampled_below_alphabet(train_softmax, work.alphabet_size)

    placement = _placement(shape, hw, work, batch_size)
    problems, advice = list(placement.pop("problems")), list(placement.pop("advice"))
    extraction_flops = work.padded_tokens * shape.flops_per_token(max(wanted), work.mean_width)
    extraction_seconds = _extraction_seconds(
        shape, hw, work, placement, extraction_flops, max(wanted), len(wanted), cache_dtype
    )

    memory = _probe_memory(work, shape, train_softmax, probe, precision)
    budget = int(hw.memory * PROBE_BUDGET_FRACTION)
    per_group = memory.layers_per_group(budget, len(wanted))
    groups = layer_groups(wanted, per_group)
    flops, seconds, setup_seconds = _probe_epoch(memory, work, hw, [len(g) for g in groups])
    if not memory.fits(budget):
        problems.append(
            f"one layer's probe needs {format_bytes(memory.shared_bytes + memory.layer_bytes)} "
            f"but a device offers it {format_bytes(budget)}"
        )
        advice.extend(_probe_advice(memory, budget, work, shape))
    cache_bytes = _cache_bytes(work, shape, len(wanted), cache_dtype)
    if cache_dtype == "fp32" and cache_bytes > hw.host_memory:
        advice.append(
            f"the fp32 cache ({format_bytes(cache_bytes)}) is larger than host memory: --cache-dtype bf16 "
            "halves it (the probe streams one layer group at a time either way)"
        )
    alternatives = []
    for change in ALTERNATIVES:
        if all(getattr(memory, k) == v for k, v in change.items()) or not _samples_fewer(change, work):
            continue
        alt = _probe_memory(
            work, shape, change.get("train_softmax", train_softmax), change.get("probe", probe), precision
        )
        alt_groups = layer_groups(wanted, alt.layers_per_group(budget, len(wanted)))
        alt_flops, alt_seconds, _ = _probe_epoch(alt, work, hw, [len(g) for g in alt_groups])
        alternatives.append(
            {
                **change,
                "probe_seconds_per_epoch": alt_seconds,
                "probe_flops_per_epoch": alt_flops,
                "layers_per_group": len(alt_groups[0]),
                "probe_bytes_per_layer": alt.layer_bytes,
                "fits": alt.fits(budget),
            }
        )

    return Plan(
        model=shape.name,
        architecture=shape.architecture,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        parameters=shape.parameters,
        loaded_parameters=shape.loaded_parameters,
        weight_bytes=placement["weight_bytes"],
        sentences=work.sentences,
        tokens=work.tokens,
        layers=wanted,
        vocab=vocab,
        alphabet_size=work.alphabet_size,
        cache_dtype=cache_dtype,
        cache_bytes=cache_bytes,
        probe=probe,
        train_softmax=train_softmax,
        precision=precision,
        probe_parameters_per_layer=memory.parameters_per_layer,
        probe_bytes_per_layer=memory.layer_bytes,
        probe_shared_bytes=memory.shared_bytes,
        probe_budget_bytes=budget,
        layers_per_group=len(groups[0]),
        layer_groups=len(groups),
        device=hw.device,
        gpus=hw.count if hw.device == "cuda" else 0,
        gpu=hw.preset.name if hw.preset else None,
        device_memory=hw.memory,
        host_memory=hw.host_memory,
        host_memory_source=hw.host_memory_source,
        disk_rate=hw.disk_rate,
        disk_rate_source=hw.disk_source,
        matmul_tflops=hw.matmul_flops / 1e12,
        hardware=hw.source,
        replicas=placement["replicas"],
        devices_per_replica=placement["devices_per_replica"],
        offload=placement["offload"],
        offloaded_bytes=placement["offloaded_bytes"],
        extraction_batch_size=placement["batch_size"],
        probe_batch_size=memory.batch_size,
        extraction_flops=extraction_flops,
        extraction_seconds=extraction_seconds,
        probe_flops_per_epoch=flops,
        probe_seconds_per_epoch=seconds,
        probe_setup_seconds=setup_seconds,
        probe_epochs=PROBE_EPOCHS,
        probe_expected_seconds=tuple(setup_seconds + n * seconds for n in PROBE_EPOCHS),
        fits=not problems,
        problems=problems,
        advice=advice,
        alternatives=alternatives,
    )


def _check_sampled_below_alphabet(train_softmax: str, alphabet: int) -> None:
    """Refuse ``sampled:K`` with K >= M: every step would train on the whole alphabet anyway."""
    k, _ = parse_train_softmax(train_softmax)
    if k is not None and k >= alphabet:
        raise ValueError(
            f"train_softmax {train_softmax!r} samples K = {k:,} negatives from an alphabet of only "
            f"M = {alphabet:,} ids; use 'full' (exact, and no slower) or a K below {alphabet:,}"
        )


def _samples_fewer(change: dict, work: Workload) -> bool:
    """Whether an alternative's ``sampled:K`` (if any) samples fewer ids than the alphabet holds."""
    k, _ = parse_train_softmax(change.get("train_softmax", "full"))
    return k is None or k < work.alphabet_size


def _placement(shape: ModelShape, hw: Hardware, work: Workload, batch_size: int | None) -> dict:
    """Replicas, devices per replica, offload and the extraction batch (see the module docstring)."""
    dtype_bytes = 2 if hw.device == "cuda" else 4  # load_model's default: bf16 on GPUs, fp32 on a CPU
    weight_bytes = shape.loaded_parameters * dtype_bytes
    need = weight_bytes * (1 + WEIGHT_MARGIN)
    problems: list[str] = []
    advice: list[str] = []
    out = {
        "weight_bytes": weight_bytes,
        "replicas": 1,
        "devices_per_replica": 1,
        "offload": None,
        "offloaded_bytes": 0,
        "problems": problems,
        "advice": advice,
    }
    if hw.device == "cpu":
        out["batch_size"] = batch_size or CPU_BATCH_SIZE
        if need > hw.memory:
            out["offload"], out["offloaded_bytes"] = "disk", int(need - hw.memory)
            advice.append(
                "the weights are larger than host memory: accelerate offloads the rest to disk (slow); "
                "a GPU machine or a smaller model is the real fix"
            )
        return out
    per_replica = math.ceil(need / hw.memory)
    if per_replica <= hw.count:
        out["devices_per_replica"], out["replicas"] = per_replica, hw.count // per_replica
        left = hw.memory - weight_bytes / per_replica
    else:
        out["devices_per_replica"] = hw.count
        rest = int(need - hw.count * hw.memory)
        out["offloaded_bytes"] = rest
        out["offload"] = "cpu" if rest <= 0.9 * hw.host_memory else "cpu+disk"
        advice.append(
            f"the weights ({format_bytes(weight_bytes)}) need {format_bytes(need)} with {WEIGHT_MARGIN:.0%} "
            f"headroom for activations and buffers, more than {counted(hw.count, 'GPU')} of "
            f"{format_bytes(hw.memory)}: accelerate offloads {format_bytes(rest)} to {out['offload']}; "
            f"{counted(per_replica, 'GPU')} would hold them without offload"
        )
        left = hw.memory * WEIGHT_MARGIN / (1 + WEIGHT_MARGIN)
    # Activations of one token through a block: about (block weights / d) values of 2 bytes.
    per_token = 2.0 * max(shape.block_parameters) / shape.hidden_size
    fit = int(0.5 * left / max(per_token * work.max_width, 1))
    if batch_size is not None:
        out["batch_size"] = batch_size
    else:
        out["batch_size"] = max(1, min(work.sentences, MAX_GPU_BATCH if not out["offload"] else 8 * MAX_GPU_BATCH, fit))
    if out["batch_size"] > fit:
        problems.append(
            f"an extraction batch of {out['batch_size']} sentences needs more activation memory than "
            f"is left next to the weights; use a batch of at most {max(fit, 1)}"
        )
    return out


def counted(n: int, thing: str) -> str:
    """ "1 GPU", "2 GPUs"."""
    return f"{n} {thing}" + ("" if n == 1 else "s")


def _extraction_seconds(
    shape, hw: Hardware, work: Workload, placement: dict, flops: float, blocks: int, taps: int, cache_dtype: str
) -> float:
    """The forward passes, the pooling of every tapped layer, and the cache files (module docstring).

    Shards are split over the replicas; every process tokenizes the corpus and checks its taps on a
    few sentences, and one writes the targets and the output embedding."""
    batches = math.ceil(work.sentences / placement["batch_size"])
    per_token = (
        ELEMENTWISE_PER_WEIGHT_ROW * max(shape.block_parameters) / shape.hidden_size
        + ATTENTION_PASSES * shape.num_heads * work.mean_width
    )
    tokens_per_batch = int(placement["batch_size"] * work.mean_width)
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
    shared_files = (4 * shape.vocab_size * shape.hidden_size + _targets_bytes(work)) * hw.file_seconds
    verify = 2 * blocks * OPS_PER_BLOCK * hw.op_seconds  # two forwards of a few sentences, taps against hidden_states
    transfer = 0.0
    if placement["offload"]:
        rate = OFFLOAD_BANDWIDTH["disk" if "disk" in placement["offload"] else "cpu"]
        transfer = batches * placement["offloaded_bytes"] / rate  # every batch streams the offloaded weights
    once = work.tokenize_seconds + shared_files + verify
    return (compute + pooling + shards + transfer) / placement["replicas"] + once


def _probe_memory(work: Workload, shape: ModelShape, train_softmax: str, probe: str, precision: str) -> ProbeMemory:
    return ProbeMemory(
        rows=work.probe_rows,
        dim=shape.hidden_size,
        alphabet=work.alphabet_size,
        batch_size=TRAIN_BATCH_SIZE,
        precision=precision,
        train_softmax=train_softmax,
        probe=probe,
        mean_bag=work.mean_bag,
    )


def _probe_epoch(
    memory: ProbeMemory, work: Workload, hw: Hardware, group_sizes: list[int]
) -> tuple[float, float, float]:
    """(FLOPs, seconds) of one epoch over all groups, and the seconds of the groups' set-up (their
    parameters, Adam's moments, the best copy and the first validation pass, once per run); groups
    go round-robin to the devices (one rank each).

    The default probe (linear, full softmax) on a CPU whose rates are measured here is timed on its
    own code at the work's shape (:func:`_probe_seconds_timed`); every other case is counted:
    FLOPs at the matmul rate, elementwise passes at the elementwise rate, a fixed cost per step.
    """
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
    if hw.measured and memory.probe == "linear" and memory.train_softmax == "full":
        for i, (epoch, setup) in enumerate(_probe_seconds_timed(memory, work, hw, group_sizes)):
            done = workers[i % len(workers)]
            workers[i % len(workers)] = (done[0] + epoch, done[1] + setup + fresh * group_sizes[i])
        return flops, max(w[0] for w in workers), max(w[1] for w in workers)
    steps = math.ceil(train / memory.batch_size)
    chunks = math.ceil(val / memory.batch_size)
    train_passes, val_passes = LOGIT_PASSES[hw.device]
    elements = (
        train * s * train_passes
        + val * m * val_passes
        + (steps * ADAM_PASSES + BEST_COPY_PASSES) * memory.parameters_per_layer
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


def _probe_seconds_timed(
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


def _probe_advice(memory: ProbeMemory, budget: int, work: Workload, shape: ModelShape) -> list[str]:
    tips = []
    for k in (65536, 32768, 16384, 8192, 4096, 2048, 1024):
        if k < memory.alphabet and ProbeMemory(**{**asdict(memory), "alphabet": k}).fits(budget):
            tips.append(f"--vocab top:{k} (an alphabet of {k} fits)")
            break
    if memory.probe == "linear" and ProbeMemory(**{**asdict(memory), "probe": "unembedding"}).fits(budget):
        tips.append("--probe unembedding (trains A [d, d] through the frozen output embedding)")
    tips.append("GPUs with more memory, or fewer sentences (the features of every sentence are on the device)")
    return tips


def _cache_bytes(work: Workload, shape: ModelShape, num_layers: int, cache_dtype: str) -> int:
    """Shards (values + int64 row ids per layer) and the targets file (int64 ids, counts, offsets)."""
    values = work.sentences * num_layers * (shape.hidden_size * CACHE_DTYPE_BYTES[cache_dtype] + 8)
    return int(values + _targets_bytes(work))


def _targets_bytes(work: Workload) -> int:
    """The targets file: int64 ids and counts per bag entry; offsets, row ids and lengths per sentence."""
    return int(16 * work.sentences * work.mean_bag + 24 * work.sentences)
