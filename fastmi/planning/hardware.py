"""What the planner assumes about the machine: devices, memory, and rates measured in-process.

The matmul rate is measured, not looked up: one large matmul in the dtype extraction would run
(fp32 on a CPU, bf16 on a GPU), timed after a warm-up, best of a few.  On a CPU shared with other
work that is the rate this process gets now, which is what makes an estimate honest there.  The
elementwise rate (elements/s of a 1M-element op) and the per-operation cost (one 64k-element op) price
the passes of norms, activations and softmaxes and the many small steps of a small model, where the
matmuls alone would promise too much.  Both use the intra-op thread pool, so on a CPU crowded with
other processes they show the stalls that the model's own operations will meet.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

__all__ = [
    "ACHIEVED_FRACTION",
    "GPU_PRECISION_SPEED",
    "GPU_PRESETS",
    "H200_BANDWIDTH",
    "GpuPreset",
    "Hardware",
    "detect_hardware",
    "gpu_preset",
    "measure_bandwidth",
    "measure_elementwise_rate",
    "measure_file_seconds",
    "measure_fresh_memory_seconds",
    "measure_matmul_flops",
    "measure_op_seconds",
    "measure_probe_costs",
    "measure_probe_step_seconds",
    "parse_rate",
    "ProbeCosts",
]

# Real work reaches this share of the rates measured here: the measurements run hot in cache, a
# model's passes stream larger working sets.  Fitted on the planner's honesty runs on a 2-core CPU
# (tests/test_plan_honesty.py: 7 estimate/measured ratios of 0.45-0.94 without it, geometric mean 0.63).
CPU_EFFICIENCY = 0.65
# The share of a GPU's published dense bf16 peak that a preset's matmuls are planned at: large bf16 GEMMs
# of a transformer's shapes reach roughly half to two thirds of the datasheet figure (an assumption, not
# measured by this project; --matmul-tflops replaces it).
ACHIEVED_FRACTION = 0.6
GPU_OP_SECONDS = 10e-6  # a kernel launch, when no GPU is present to measure one
GPU_OPS_PER_STEP = (50, 25)  # launches of one probe step of L layers: a + b L (bag selection, kernels, AdamW)
# What a GPU node that is not this machine is assumed to have, unless --host-memory / --disk-rate say:
# a DGX H100/H200 has 2 TB of RAM for its 8 GPUs.  A cache file costs its writer a sha256 of the tensors
# (about 2 GB/s on one server core with SHA extensions), the safetensors serialisation (a copy) and the
# write into the page cache: about 1 GB/s per extracting process together.
GPU_NODE_HOST_MEMORY_PER_GPU = 250e9
GPU_NODE_DISK_RATE = 1e9


@dataclass(frozen=True)
class GpuPreset:
    """A GPU's published figures (dense, no sparsity; vendor datasheets cited in docs/scaling.md)."""

    name: str
    memory: int  # bytes, in the datasheet's decimal GB
    bf16_tflops: float  # peak dense bf16 tensor-core TFLOP/s
    tf32_tflops: float  # peak dense TF32 tensor-core TFLOP/s
    fp32_tflops: float  # peak fp32 TFLOP/s (the probe's full-precision dots)
    bandwidth: float  # memory bytes/s

    @property
    def precision_speed(self) -> dict[str, float]:
        """The probe's matmul speed at each precision relative to bf16."""
        return {"bf16": 1.0, "tf32": self.tf32_tflops / self.bf16_tflops, "fp32": self.fp32_tflops / self.bf16_tflops}


# Datasheets state tensor-core rates with 2:4 sparsity; these are half of those (the dense rates).
GPU_PRESETS = {
    "h100": GpuPreset("H100 SXM", 80 * 10**9, 989, 494, 67, 3.35e12),
    "h200": GpuPreset("H200 SXM", 141 * 10**9, 989, 494, 67, 4.8e12),
    "a100-80gb": GpuPreset("A100 SXM 80GB", 80 * 10**9, 312, 156, 19.5, 2.039e12),
    "l40s": GpuPreset("L40S", 48 * 10**9, 362, 183, 91.6, 0.864e12),
}
H200_BANDWIDTH = GPU_PRESETS["h200"].bandwidth  # the default for GPUs not present here and named by no preset
# Probe matmul speed relative to bf16 on a GPU named by no preset: an H100/H200's (fastmi's fp32 kernels use
# full-precision dots, fastmi/kernels/bag_cross_entropy_triton.py).  On a CPU every precision runs fp32 matmuls.
GPU_PRECISION_SPEED = GPU_PRESETS["h100"].precision_speed


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
        return CPU_EFFICIENCY * measure_matmul_flops("cpu", shape=shape, seconds=0.3)

    def probe_costs(self, layers: int, rows: int, dim: int, columns: int, validation_rows: int, mean_bag: float):
        """The linear probe's operations timed at this shape on this CPU (:func:`measure_probe_costs`)."""
        return measure_probe_costs(layers, rows, dim, columns, validation_rows, mean_bag)

    def probe_flops(self, precision: str) -> float:
        """FLOP/s of the probe's matmuls at ``precision``."""
        if self.device != "cuda":
            return self.matmul_flops
        speed = self.preset.precision_speed if self.preset else GPU_PRECISION_SPEED
        return self.matmul_flops * speed[precision]


def measure_matmul_flops(
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    size: int = 1024,
    seconds: float = 0.5,
    shape: tuple[int, int, int] | None = None,
) -> float:
    """FLOP/s of [m, k] x [k, n] matmuls (``shape``, default ``size`` cubed), averaged over ``seconds``."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    m, k, n = shape or (size, size, size)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    b = torch.randn(k, n, generator=generator).to(device, dtype)
    calls = _repeat(lambda: torch.mm(a, b), device, seconds)
    return 2.0 * m * k * n * calls


def measure_op_seconds(device: str | torch.device = "cpu", elements: int = 1 << 16, seconds: float = 0.4) -> float:
    """Seconds of one small elementwise operation (64k elements: big enough to use the thread pool)."""
    return elements / measure_elementwise_rate(device, elements, seconds)


def measure_elementwise_rate(
    device: str | torch.device = "cpu", elements: int = 1 << 20, seconds: float = 0.3
) -> float:
    """Elements/s of a multiply over ``elements`` fp32 values into a new tensor (as a model's norms and
    activations allocate theirs), averaged over ``seconds``."""
    x = torch.ones(elements, device=torch.device(device))
    return elements * _repeat(lambda: x * 1.0, torch.device(device), seconds)


_clock = time.perf_counter  # wall time: what a plan promises (a test may count this process's CPU time)


def _repeat(operation, device: torch.device, seconds: float) -> float:
    """Calls per second of ``operation``, over at least ``seconds`` of wall time after one warm-up call.

    A mean over a window, not the best call: on a CPU shared with other processes, the share of
    the cores this process gets is part of the rate its real work will see.
    """
    operation()
    _sync(device)
    calls, start = 0, _clock()
    while True:
        operation()
        calls += 1
        if calls % 4 == 0 or calls < 4:
            _sync(device)
            elapsed = _clock() - start
            if elapsed >= seconds:
                return calls / elapsed


def measure_probe_step_seconds(device: str | torch.device = "cpu", seconds: float = 0.3) -> tuple[float, float]:
    """(a, b) with a + b L the seconds of one Adam step of the probe of L layers when its matmuls are free.

    Timed on the probe's own code (bag selection, the fused bag CE forward and backward, AdamW) at a
    tiny shape, for 1 and 4 layers: the dispatch, thread wake-ups and bookkeeping every step pays.
    """
    from fastmi.data.bags import BagTargets

    device = torch.device(device)
    bags = BagTargets.from_token_lists([[i % 32, (3 * i + 1) % 32] for i in range(8)], vocab_size=32).to(device)
    rows = torch.arange(8, device=device)
    timings = [1.0 / _repeat(_probe_step(layers, bags, rows, device), device, seconds) for layers in (1, 4)]
    slope = max(0.0, (timings[1] - timings[0]) / 3)
    return max(0.0, timings[0] - slope), slope


def _probe_step(layers: int, bags, rows: torch.Tensor, device: torch.device):
    """One Adam step of a tiny probe of ``layers`` layers, as a function of nothing."""
    from fastmi import kernels
    from fastmi.probe.training import _Adam

    z = torch.randn(layers, 8, 16, generator=torch.Generator().manual_seed(0)).to(device)
    weight = torch.zeros(layers, 32, 16, device=device, requires_grad=True)
    bias = torch.zeros(layers, 32, device=device, requires_grad=True)
    optimizer = _Adam([weight, bias], lr=1e-3, weight_decay=(0.0, 0.0))

    def step() -> None:
        loss = kernels.bag_cross_entropy(z[:, rows], weight, bias, bags.select(rows), reduction="mean")
        weight.grad = bias.grad = None
        loss.sum().backward()
        optimizer.step()

    return step


@dataclass(frozen=True)
class ProbeCosts:
    """Seconds of the linear probe's own operations, timed on its code at one shape (``layers`` layers,
    ``columns`` alphabet ids, the step's and the validation chunk's rows as the plan's work has them)."""

    layers: int
    columns: int
    # one AdamW step: bag CE forward and backward over the rows, the update (fastmi.probe.training.train_step)
    step: float
    validation_chunk: float  # the validation cross-entropy of one chunk of rows (forward only)
    epoch: float  # per epoch: the shuffle and the best copy of every improved layer (EarlyStopping.update)
    setup: float  # per fit: W, b, Adam's moments and the best copy made (the first validation pass excluded)


def measure_probe_costs(
    layers: int, rows: int, dim: int, columns: int, validation_rows: int, mean_bag: float, seconds: float = 0.3
) -> ProbeCosts:
    """Time the linear probe's step, validation chunk, epoch bookkeeping and setup on a CPU at this shape.

    The real functions of :mod:`fastmi.probe.training` on random features and bags: the same operations,
    allocations and working set as a fit of this shape, so whatever the machine does to them (caches,
    memory bandwidth, page faults, neighbours) it does to the estimate too.
    """
    from fastmi.probe.training import EarlyStopping, TrainConfig, mean_ce, new_probes, train_step

    generator = torch.Generator().manual_seed(0)
    config = TrainConfig(precision="fp32")
    z = torch.randn(layers, rows, dim, generator=generator)
    z_val = torch.randn(layers, validation_rows, dim, generator=generator)
    bags, bags_val = (_random_bags(n, columns, mean_bag, generator) for n in (rows, validation_rows))
    log_prior = torch.full((layers, columns), -math.log(columns))
    weight, bias, optimizer = new_probes(log_prior, dim, config)
    order = torch.arange(rows)
    cpu = torch.device("cpu")
    step = 1.0 / _repeat(lambda: train_step(z, order, bags, weight, bias, optimizer, "fp32"), cpu, seconds)
    chunk = max(validation_rows, 1)
    validation = 1.0 / _repeat(lambda: mean_ce(z_val, weight.detach(), bias.detach(), bags_val, chunk), cpu, seconds)
    stopping = EarlyStopping([weight, bias], torch.full((layers,), 1e6, dtype=torch.float64), config)
    epochs = [0]

    def epoch() -> None:  # every layer improved: the whole best copy is refreshed (early epochs)
        epochs[0] += 1
        torch.randperm(rows, generator=generator)
        stopping.update(epochs[0], [weight, bias], torch.full((layers,), 1e6 - epochs[0], dtype=torch.float64))

    per_epoch = 1.0 / _repeat(epoch, cpu, seconds)

    def start() -> None:
        w, b, _ = new_probes(log_prior, dim, config)
        EarlyStopping([w, b], torch.zeros(layers, dtype=torch.float64), config)

    setup = 1.0 / _repeat(start, cpu, seconds)
    return ProbeCosts(layers, columns, step, validation, per_epoch, setup)


def _random_bags(rows: int, columns: int, mean_bag: float, generator: torch.Generator):
    """``rows`` bags of about ``mean_bag`` distinct ids below ``columns`` (at least one each)."""
    from fastmi.data.bags import BagTargets

    size = max(1, min(columns, round(mean_bag)))
    ids = torch.stack([torch.randperm(columns, generator=generator)[:size].sort().values for _ in range(rows)])
    offsets = torch.arange(rows + 1) * size
    return BagTargets(offsets, ids.flatten(), torch.ones(rows * size, dtype=torch.long))


def measure_fresh_memory_seconds(nbytes: int = 64 << 20, seconds: float = 0.2) -> float:
    """Seconds per byte that writing newly allocated memory costs over writing memory already in use.

    ``nbytes`` beyond the allocator's reuse (glibc maps blocks over 32 MB afresh every time), so
    every call meets the page faults and zeroing that a probe's new parameters, moments and
    gradients meet when they are first written."""
    cpu = torch.device("cpu")
    used = torch.empty(nbytes // 4)
    warm = 1.0 / _repeat(lambda: used.fill_(1.0), cpu, seconds)
    fresh = 1.0 / _repeat(lambda: torch.empty(nbytes // 4).fill_(1.0), cpu, seconds)
    return max(0.0, fresh - warm) / nbytes


def measure_file_seconds(nbytes: int = 16 << 20, seconds: float = 0.2) -> float:
    """Seconds per byte of writing a cache file (sha256 of the tensors, safetensors serialisation, the
    write into a temporary file): what every shard, the targets and the output embedding cost the
    extracting process's CPU.  Waiting for the disk (fsync) is not counted."""
    import tempfile

    from fastmi.activations.cache import encode_safetensors

    tensors = {"embeddings": torch.ones(nbytes // 4)}
    with tempfile.TemporaryFile() as f:

        def write() -> None:
            f.seek(0)
            f.truncate()  # new pages, as a new file gets
            f.write(encode_safetensors(tensors, {"layer": 0})[0])

        return 1.0 / _repeat(write, torch.device("cpu"), seconds) / nbytes


def measure_bandwidth(device: str | torch.device = "cpu", nbytes: int = 64 * 2**20) -> float:
    """Bytes/s of a large copy (read + write)."""
    device = torch.device(device)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for i in range(4):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2.0 * nbytes / best


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


def gpu_preset(name: str) -> GpuPreset:
    """The preset called ``name`` (case-insensitive), or a clear error naming the ones there are."""
    preset = GPU_PRESETS.get(name.strip().lower())
    if preset is None:
        raise ValueError(f"unknown GPU {name!r}: the presets are {', '.join(GPU_PRESETS)}")
    return preset


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
    rate = matmul_flops or scale * measure_matmul_flops("cpu")
    step = tuple(t / scale for t in measure_probe_step_seconds("cpu"))
    return Hardware(
        "cpu",
        1,
        host.memory,
        host.memory,
        rate,
        bandwidth or measure_bandwidth("cpu"),
        measure_op_seconds("cpu") / scale,
        scale * measure_elementwise_rate("cpu"),
        step,
        "given matmul rate" if matmul_flops else "rates measured in this process",
        measured=measured,
        fresh_memory_seconds=measure_fresh_memory_seconds(),
        **host.fields(),
    )


def _local_gpus(count, gpu_memory, host_memory, matmul_flops, bandwidth, disk_rate) -> Hardware:
    """GPUs present here: what is not given is read or measured on them (and on this host)."""
    memory = gpu_memory or torch.cuda.get_device_properties(0).total_memory
    rate = matmul_flops or measure_matmul_flops("cuda", size=8192, seconds=1.0)
    band = bandwidth or measure_bandwidth("cuda", 1 << 30)
    given = [name for name, value in (("matmul rate", matmul_flops), ("memory", gpu_memory)) if value]
    what = ", ".join(f"given {g}" for g in given) or "measured here"
    host = _host(host_memory, disk_rate)
    return _gpu_hardware(count, memory, rate, band, measure_op_seconds("cuda"), what, None, host)


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
        memory, memory_source = _host_memory(), "free RAM here"
    if disk_rate:
        rate, disk_source = disk_rate, "given"
    elif gpus_elsewhere:
        rate, disk_source = GPU_NODE_DISK_RATE, "default for a GPU node; --disk-rate"
    else:  # cache files are encoded on the host CPU that plans, which is the one that will extract
        rate, disk_source = 1.0 / measure_file_seconds(), "measured here"
    return _Host(memory, memory_source, rate, disk_source)


def _host_memory() -> int:
    """Available host RAM (what the probe's default budget on a CPU also starts from)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
