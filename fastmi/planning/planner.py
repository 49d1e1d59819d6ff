"""``fastmi.plan``: what a sweep of a model will cost, and whether it fits, from its config alone.

Every figure is an estimate from a model of the work (docs/scaling.md), each part in its own module:

* extraction (:mod:`fastmi.planning.extraction_cost`): the forward FLOPs up to the deepest tapped
  layer at the matmul rate (measured here, given, or a GPU preset's published peak at
  :data:`fastmi.planning.gpu_presets.ACHIEVED_FRACTION`), the small operations of each block of
  each batch, the pooling of every tapped layer, the cache files at the target's disk rate and,
  once per process, the tokenization and the check of the taps;
* the probe, per epoch (:mod:`fastmi.planning.probe_cost`): timed on its own code at the work's
  shape on a measured CPU, counted otherwise.  Each group's set-up is counted once per run
  (``probe_setup_seconds``), and the whole probe (``probe_expected_seconds``) as the set-up plus
  :data:`PROBE_EPOCHS` epochs, the range early stopping ran in recorded sweeps;
* memory: :mod:`fastmi.probe.memory`, the same function that sizes the probe's layer groups;
* placement (:mod:`fastmi.planning.placement`): devices per replica, data-parallel replicas and
  offload by accelerate (CPU, then disk);
* the machine (:mod:`fastmi.planning.hardware`) and, where something does not fit, the change that
  makes it fit (:mod:`fastmi.planning.advice`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastmi.probe.config import ProbeConfig

import os
from dataclasses import asdict, dataclass, field

from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.models.shape import ModelShape, model_shape
from fastmi.planning.advice import fp32_cache_advice, probe_advice, probe_does_not_fit
from fastmi.planning.extraction_cost import cache_bytes, extraction_seconds
from fastmi.planning.hardware import Hardware, detect_hardware, parse_rate
from fastmi.planning.placement import CPU_BATCH_SIZE, place
from fastmi.planning.probe_cost import ProbeEstimate, compute_bound_estimate, estimate_probe
from fastmi.planning.workload import Workload, corpus_workload, synthetic_workload
from fastmi.probe.memory import CACHE_DTYPE_BYTES
from fastmi.probe.precision import resolve_precision
from fastmi.probe.sampled_softmax import parse_train_softmax

__all__ = ["PROBE_EPOCHS", "Plan", "plan"]

# The epochs early stopping ran (patience 3, at most 40) at 10,000 sentences: the default probe
# ("auto", its longer form's epochs) on the observed alphabet, 17-21 (MiniLM, every layer) and 18-40
# (SmolLM2, layers 0-30 by 5) in bench/probe_family.jsonl's rows with "forms_after"; the linear probe
# on top:512, where the default has not been timed yet, 23-24 (docs/findings/large_10k/results.json);
# "epochs_run" of each layer group.
PROBE_EPOCHS = (17, 40)
PROBE_EPOCHS_SOURCE = (
    "the epochs early stopping ran in the 10,000-sentence runs of bench/probe_family.py and docs/findings"
)
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
    # The smallest batch at which a GPU step's matmuls outlast its optimizer pass, and the epoch there
    # (probe_cost.compute_bound_batch); the run's own batch where that is already so.
    compute_bound_batch_size: int
    compute_bound_seconds_per_epoch: float
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
    probe: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    hardware: Hardware | None = None,
    model_cache_dir: str | os.PathLike | None = None,
    gpu: str | None = None,
    disk_rate: float | str | None = None,
    config: ProbeConfig | None = None,
) -> Plan:
    """Plan extracting and probing ``model`` over ``corpus`` (or ``sentences`` of ``mean_tokens``).

    ``model``: a spec as for :func:`fastmi.load_model` or a path to a ``config.json`` (only the config
    is read), or a :class:`fastmi.models.shape.ModelShape`.  ``gpus``: None plans for this machine's
    GPUs (its CPU if none; one GPU with ``gpu``), 0 for its CPU.  ``gpu_memory``/``host_memory``: bytes or "141GB".
    ``matmul_tflops``: the achieved dense matmul rate of one device in the extraction dtype (bf16 on
    GPUs); measured here if not given.  ``gpu``: a preset of published figures ("h100", "h200",
    "a100-80gb", "l40s"; :data:`fastmi.planning.gpu_presets.GPU_PRESETS`) for the memory and the matmul rate,
    which ``gpu_memory`` and ``matmul_tflops`` override.  ``disk_rate``: bytes/s or "1GB/s" at which one
    extracting process writes its cache files on the target (measured here when planning for this
    machine; :data:`fastmi.planning.gpu_presets.GPU_NODE_DISK_RATE` for GPUs elsewhere).  ``precision``: "auto"
    as the probe resolves it (bf16 on GPUs).  ``config``: the :class:`fastmi.ProbeConfig` the run will use
    (:func:`_run_settings`).  On GPUs the plan also prices the compute-bound probe batch beside the run's
    (:func:`fastmi.planning.probe_cost.compute_bound_batch`).  Other settings as in :func:`fastmi.extract`
    and :func:`fastmi.recoverability`.
    """
    vocab, probe, train_softmax, precision, probe_batch = _run_settings(config, vocab, probe, train_softmax, precision)
    from fastmi.activations.extraction import parse_layers

    if cache_dtype not in CACHE_DTYPE_BYTES:
        raise ValueError(f"cache_dtype must be fp32, bf16 or fp16, got {cache_dtype!r}")
    parse_train_softmax(train_softmax)
    shape = model if isinstance(model, ModelShape) else model_shape(model, model_cache_dir)
    hw = hardware or _hardware(gpus, gpu_memory, host_memory, matmul_tflops, gpu, disk_rate)
    precision = resolve_precision(precision, hw.device)  # "auto": what the probe runs there
    wanted = parse_layers(layers, shape.num_layers)
    work = _workload(shape, corpus, sentences, mean_tokens, max_length, vocab, batch_size, len(wanted), model_cache_dir)
    _check_sampled_below_alphabet(train_softmax, work.alphabet_size)

    placement = place(shape, hw, work, batch_size)
    problems, advice = list(placement.problems), list(placement.advice)
    extraction_flops = work.padded_tokens * shape.flops_per_token(max(wanted), work.mean_width)
    extraction = extraction_seconds(shape, hw, work, placement, extraction_flops, max(wanted), len(wanted), cache_dtype)
    probing = estimate_probe(work, shape, hw, wanted, train_softmax, probe, precision, probe_batch)
    memory, budget = probing.memory, probing.budget
    fast = compute_bound_estimate(probing, work, shape, hw)
    if not memory.fits(budget):
        problems.append(probe_does_not_fit(memory, budget))
        advice.extend(probe_advice(memory, budget))
    cache = cache_bytes(work, shape, len(wanted), cache_dtype)
    if cache_dtype == "fp32" and cache > hw.host_memory:
        advice.append(fp32_cache_advice(cache))

    return Plan(
        model=shape.name,
        architecture=shape.architecture,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        parameters=shape.parameters,
        loaded_parameters=shape.loaded_parameters,
        weight_bytes=placement.weight_bytes,
        sentences=work.sentences,
        tokens=work.tokens,
        layers=wanted,
        vocab=vocab,
        alphabet_size=work.alphabet_size,
        cache_dtype=cache_dtype,
        cache_bytes=cache,
        probe=probe,
        train_softmax=train_softmax,
        precision=precision,
        probe_parameters_per_layer=memory.parameters_per_layer,
        probe_bytes_per_layer=memory.layer_bytes,
        probe_shared_bytes=memory.shared_bytes,
        probe_budget_bytes=budget,
        layers_per_group=len(probing.groups[0]),
        layer_groups=len(probing.groups),
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
        replicas=placement.replicas,
        devices_per_replica=placement.devices_per_replica,
        offload=placement.offload,
        offloaded_bytes=placement.offloaded_bytes,
        extraction_batch_size=placement.batch_size,
        probe_batch_size=memory.batch_size,
        compute_bound_batch_size=fast.memory.batch_size,
        compute_bound_seconds_per_epoch=fast.seconds,
        extraction_flops=extraction_flops,
        extraction_seconds=extraction,
        probe_flops_per_epoch=probing.flops,
        probe_seconds_per_epoch=probing.seconds,
        probe_setup_seconds=probing.setup_seconds,
        probe_epochs=PROBE_EPOCHS,
        probe_expected_seconds=_expected_probe_seconds(probing, vocab, len(wanted)),
        fits=not problems,
        problems=problems,
        advice=advice,
        alternatives=_alternatives(work, shape, hw, wanted, probing, precision),
    )


def _run_settings(config, vocab: str, probe: str, train_softmax: str, precision: str) -> tuple:
    """``(vocab, probe, train_softmax, precision, batch)`` of the run: ``config``'s where given (so that
    the plan prices what the run will do; its "auto" precision leaves ``precision``), the probe form
    ``fastmi.recoverability`` trains (``auto`` is the linear probe under a sampled softmax), and the
    probe batch (None: the default)."""
    batch = None
    if config is not None:
        vocab, probe, train_softmax = config.vocab, config.probe, config.train_softmax
        precision = precision if config.train.precision == "auto" else config.train.precision
        batch = config.train.batch_size
    if probe == "auto" and train_softmax != "full":
        probe = "linear"
    return vocab, probe, train_softmax, precision, batch


def _hardware(gpus, gpu_memory, host_memory, matmul_tflops, gpu, disk_rate) -> Hardware:
    """The machine ``plan``'s arguments describe: bytes and rates parsed, the rest detected or measured."""
    from fastmi.probe.memory import parse_bytes

    return detect_hardware(
        gpus,
        parse_bytes(gpu_memory) if gpu_memory else None,
        parse_bytes(host_memory) if host_memory else None,
        matmul_tflops * 1e12 if matmul_tflops else None,
        gpu=gpu,
        disk_rate=parse_rate(disk_rate) if disk_rate else None,
    )


def _expected_probe_seconds(probing: ProbeEstimate, vocab: str, num_layers: int) -> tuple[float, float]:
    """The probe's set-up plus :data:`PROBE_EPOCHS` epochs, and vocab="auto"'s trial fits."""
    return tuple(
        probing.setup_seconds + epochs * probing.seconds * (1 + extra)
        for epochs, extra in zip(PROBE_EPOCHS, vocab_trials_share(vocab, num_layers))
    )


def vocab_trials_share(vocab: str, num_layers: int) -> tuple[float, float]:
    """The probe work vocab="auto" adds before the run's own fit, as a share of that fit: from two trial
    maps (the search stops at the first that does not improve) to every map of COARSENINGS, each
    trained on TRIAL_LAYERS of the layers (:mod:`fastmi.probe.alphabet_choice`); (0, 0) otherwise."""
    from fastmi.data.alphabet import COARSENINGS
    from fastmi.probe.alphabet_choice import TRIAL_LAYERS

    if vocab != "auto":
        return 0.0, 0.0
    share = min(TRIAL_LAYERS, num_layers) / num_layers
    return 2 * share, len(COARSENINGS) * share


def _workload(shape, corpus, sentences, mean_tokens, max_length, vocab, batch_size, taps, model_cache_dir) -> Workload:
    """The corpus's sentences, tokenized here, or ``sentences`` of ``mean_tokens`` each."""
    if corpus is not None:
        cpu_batch = batch_size or CPU_BATCH_SIZE
        return corpus_workload(shape, corpus, max_length, vocab, cpu_batch, taps, model_cache_dir)
    if sentences:
        return synthetic_workload(shape, sentences, mean_tokens, max_length, vocab)
    raise ValueError("give a corpus, or sentences=N (with mean_tokens) to plan for")


def _alternatives(
    work: Workload, shape: ModelShape, hw: Hardware, layers: list[int], chosen: ProbeEstimate, precision: str
) -> list[dict]:
    """The faster probe settings of :data:`ALTERNATIVES` that differ from the chosen one, priced alike."""
    memory = chosen.memory
    alternatives = []
    for change in ALTERNATIVES:
        if all(getattr(memory, k) == v for k, v in change.items()) or not _samples_fewer(change, work):
            continue
        train_softmax = change.get("train_softmax", memory.train_softmax)
        probe = change.get("probe", memory.probe)
        if probe == "auto" and train_softmax != "full":  # as fastmi.recoverability resolves it
            probe = "linear"
        alt = estimate_probe(work, shape, hw, layers, train_softmax, probe, precision)
        alternatives.append(
            {
                **change,
                "probe_seconds_per_epoch": alt.seconds,
                "probe_flops_per_epoch": alt.flops,
                "layers_per_group": len(alt.groups[0]),
                "probe_bytes_per_layer": alt.memory.layer_bytes,
                "fits": alt.memory.fits(alt.budget),
            }
        )
    return alternatives


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
