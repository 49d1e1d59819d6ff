"""What the planner assumes about the machine: its devices, their memory and their rates.

A CPU here, or GPUs present here, are measured in this process (:mod:`fastmi.planning.rates`); GPUs
named by a preset or not present here are planned from figures alone
(:mod:`fastmi.planning.gpu_presets`), so their plan does not depend on the machine that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastmi.planning import rates
from fastmi.planning.gpu_presets import (
    ACHIEVED_FRACTION,
    GPU_NODE_DISK_RATE,
    GPU_NODE_HOST_MEMORY_PER_GPU,
    GPU_OP_SECONDS,
    GPU_OPS_PER_STEP,
    GPU_PRECISION_SPEED,
    GPU_PRESETS,
    H200_BANDWIDTH,
    GpuPreset,
    gpu_preset,
)

__all__ = ["CPU_EFFICIENCY", "Hardware", "detect_hardware", "parse_rate"]

# Real work reaches this share of the rates measured here: the measurements run hot in cache, a
# model's passes stream larger working sets.  Fitted on the planner's honesty runs on a 2-core CPU
# (tests/test_plan_honesty.py: 7 estimate/measured ratios of 0.45-0.94 without it, geometric mean 0.63).
CPU_EFFICIENCY = 0.65


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" | "cpu"
    count: int  # devices (GPUs; 1 for the CPU)
    memory: int  # bytes per device
    host_memory: int  # bytes of host RAM available for offload
    matmul_flops: float  # FLOP/s of one device in the extraction dtype
    bandwidth: float  # device memory bytes/s
    op_seconds: float  # cost of one small operation (launch, dispatch, thread wake-up)
    elementwise_rate: float  # elements/s of one elementwise pass (fp32 read + write)
    probe_step_seconds: tuple[float, float]  # (a, b): fixed cost of one probe step of L layers is a + b L
    source: str  # how the figures were found, printed with the plan
    measured: bool = False  # a local CPU whose matmul rate was not given: rates at the work's own shapes
    fresh_memory_seconds: float = 0.0  # per byte of newly allocated memory written the first time (page faults)
    disk_rate: float = 0.0  # bytes/s of tensors checksummed, serialised and written into cache files (0: not priced)
    preset: GpuPreset | None = None  # the published GPU these figures come from, if any
    host_memory_source: str = "free RAM here"
    disk_source: str = "measured here"

    @property
    def file_seconds(self) -> float:
        """Seconds per byte one extracting process spends writing cache files (host CPU and disk)."""
        return 1.0 / self.disk_rate if self.disk_rate else 0.0

    def matmul_rate(self, m: int, k: int, n: int) -> float:
        """FLOP/s of an [m, k] x [k, n] matmul.  Measured at that shape on a local CPU, where the small
        matmuls of a small model run well below the large-matmul rate; the device's rate otherwise."""
        if not self.measured:
            return self.matmul_flops
        shape = (max(1, min(m, 4096)), max(1, min(k, 8192)), max(1, min(n, 8192)))
        return CPU_EFFICIENCY * rates.measure_matmul_flops("cpu", shape=shape, seconds=0.3)

    def probe_costs(self, layers: int, rows: int, dim: int, columns: int, validation_rows: int, mean_bag: float):
        """The linear probe's operations timed at this shape on this CPU (:func:`rates.measure_probe_costs`)."""
        return rates.measure_probe_costs(layers, rows, dim, columns, validation_rows, mean_bag)

    def probe_flops(self, precision: str) -> float:
        """FLOP/s of the probe's matmuls at ``precision``."""
        if self.device != "cuda":
            return self.matmul_flops
        speed = self.preset.precision_speed if self.preset else GPU_PRECISION_SPEED
        return self.matmul_flops * speed[precision]


def detect_hardware(
    gpus: int | None = None,
    gpu_memory: int | None = None,
    host_memory: int | None = None,
    matmul_flops: float | None = None,
    bandwidth: float | None = None,
    gpu: str | None = None,
    disk_rate: float | None = None,
) -> Hardware:
    """The machine to plan for: the given figures, the rest from the ``gpu`` preset or measured here.

    ``gpus=None`` means the local GPUs (the CPU if there is none), or one GPU when ``gpu`` names a
    preset; ``gpus=0`` plans for this CPU.  GPUs named by a preset, or not present here, are planned
    from figures alone (the preset's, or ``gpu_memory`` and ``matmul_flops``) and a GPU node's host
    memory and disk rate (:data:`GPU_NODE_HOST_MEMORY_PER_GPU`, :data:`GPU_NODE_DISK_RATE`), so their
    plan does not depend on the machine that makes it.  ``disk_rate``: bytes/s one extracting process
    writes its cache files at.
    """
    local_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    preset = gpu_preset(gpu) if gpu else None
    count = _gpu_count(gpus, local_gpus, preset)
    if count == 0:
        return _this_cpu(host_memory, matmul_flops, bandwidth, disk_rate)
    if preset is None and count <= local_gpus:
        return _local_gpus(count, gpu_memory, host_memory, matmul_flops, bandwidth, disk_rate)
    return _planned_gpus(count, local_gpus, preset, gpu_memory, host_memory, matmul_flops, bandwidth, disk_rate)


def parse_rate(text: str | float) -> float:
    """ "1GB/s" or "1GB" -> 1e9 bytes/s (decimal units); a number is bytes/s."""
    from fastmi.probe.memory import parse_bytes

    return float(parse_bytes(text.strip().removesuffix("/s") if isinstance(text, str) else text))


def _gpu_count(gpus: int | None, local_gpus: int, preset: GpuPreset | None) -> int:
    if gpus is None:
        return 1 if preset else local_gpus  # a preset plans for GPUs elsewhere, not for the ones here
    count = int(gpus)
    if count < 0:
        raise ValueError(f"gpus must be 0 (plan for the CPU) or more, got {count}")
    if count == 0 and preset:
        raise ValueError(f"gpus=0 plans for this CPU, but gpu={preset.name!r} names a GPU: drop one of them")
    return count


def _this_cpu(host_memory, matmul_flops, bandwidth, disk_rate) -> Hardware:
    """This CPU, its rates measured now (scaled by :data:`CPU_EFFICIENCY`) unless a matmul rate is given."""
    host = _host(host_memory, disk_rate)
    measured = not matmul_flops
    scale = CPU_EFFICIENCY if measured else 1.0
    rate = matmul_flops or scale * rates.measure_matmul_flops("cpu")
    step = tuple(t / scale for t in rates.measure_probe_step_seconds("cpu"))
    return Hardware(
        "cpu",
        1,
        host.memory,
        host.memory,
        rate,
        bandwidth or rates.measure_bandwidth("cpu"),
        rates.measure_op_seconds("cpu") / scale,
        scale * rates.measure_elementwise_rate("cpu"),
        step,
        "given matmul rate" if matmul_flops else "rates measured in this process",
        measured=measured,
        fresh_memory_seconds=rates.measure_fresh_memory_seconds(),
        **host.fields(),
    )


def _local_gpus(count, gpu_memory, host_memory, matmul_flops, bandwidth, disk_rate) -> Hardware:
    """GPUs present here: what is not given is read or measured on them (and on this host)."""
    memory = gpu_memory or torch.cuda.get_device_properties(0).total_memory
    rate = matmul_flops or rates.measure_matmul_flops("cuda", size=8192, seconds=1.0)
    band = bandwidth or rates.measure_bandwidth("cuda", 1 << 30)
    given = [name for name, value in (("matmul rate", matmul_flops), ("memory", gpu_memory)) if value]
    what = ", ".join(f"given {g}" for g in given) or "measured here"
    host = _host(host_memory, disk_rate)
    return _gpu_hardware(count, memory, rate, band, rates.measure_op_seconds("cuda"), what, None, host)


def _planned_gpus(count, local_gpus, preset, gpu_memory, host_memory, matmul_flops, bandwidth, disk_rate) -> Hardware:
    """GPUs planned from figures alone: the preset's, or the given memory and matmul rate."""
    memory = gpu_memory or (preset.memory if preset else None)
    rate = matmul_flops or (ACHIEVED_FRACTION * preset.bf16_tflops * 1e12 if preset else None)
    if not (memory and rate):
        raise ValueError(
            f"planning for {count} GPUs that are not all present here ({local_gpus} found) needs "
            f"--gpu {{{','.join(GPU_PRESETS)}}}, or --gpu-memory and --matmul-tflops"
        )
    band = bandwidth or (preset.bandwidth if preset else H200_BANDWIDTH)
    what = _planned_source(preset, gpu_memory, matmul_flops, bandwidth)
    host = _host(host_memory, disk_rate, gpus_elsewhere=count)
    return _gpu_hardware(count, memory, rate, band, GPU_OP_SECONDS, what, preset, host)


def _planned_source(preset: GpuPreset | None, gpu_memory, matmul_flops, bandwidth) -> str:
    """Where a planned GPU's figures come from, as the plan prints it."""
    parts = [f"given {name}" for name, value in (("memory", gpu_memory), ("matmul rate", matmul_flops)) if value]
    if preset is None:
        return ", ".join(parts) + ("" if bandwidth else f", assumed an H200's {H200_BANDWIDTH / 1e12:.3g} TB/s")
    if not matmul_flops:
        parts.append(f"matmuls at {ACHIEVED_FRACTION:.0%} of the {preset.bf16_tflops:g} dense bf16 TFLOP/s peak")
    return "; ".join(["published figures in docs/scaling.md", *parts])


def _gpu_hardware(count, memory, rate, band, op, what, preset, host: _Host) -> Hardware:
    return Hardware(
        "cuda",
        count,
        memory,
        host.memory,
        rate,
        band,
        op,
        band / 8,  # one fp32 read and write per element
        tuple(n * op for n in GPU_OPS_PER_STEP),
        what,
        preset=preset,
        **host.fields(),
    )


@dataclass(frozen=True)
class _Host:
    """The host side of a plan: its RAM and the rate its extracting processes write cache files at."""

    memory: int
    memory_source: str
    disk_rate: float
    disk_source: str

    def fields(self) -> dict:
        return {"disk_rate": self.disk_rate, "disk_source": self.disk_source, "host_memory_source": self.memory_source}


def _host(host_memory: int | None, disk_rate: float | None, gpus_elsewhere: int = 0) -> _Host:
    """What is given, else a GPU node's defaults when the GPUs are elsewhere (``gpus_elsewhere`` of
    them), else this machine's own: its free RAM and its cache-file writing, measured."""
    if host_memory:
        memory, memory_source = host_memory, "given"
    elif gpus_elsewhere:
        memory = int(GPU_NODE_HOST_MEMORY_PER_GPU * gpus_elsewhere)
        memory_source = f"default for a GPU node: {GPU_NODE_HOST_MEMORY_PER_GPU / 1e9:g} GB per GPU; --host-memory"
    else:
        memory, memory_source = rates.measure_free_host_memory(), "free RAM here"
    if disk_rate:
        rate, disk_source = disk_rate, "given"
    elif gpus_elsewhere:
        rate, disk_source = GPU_NODE_DISK_RATE, "default for a GPU node; --disk-rate"
    else:  # cache files are encoded on the host CPU that plans, which is the one that will extract
        rate, disk_source = 1.0 / rates.measure_file_seconds(), "measured here"
    return _Host(memory, memory_source, rate, disk_source)
