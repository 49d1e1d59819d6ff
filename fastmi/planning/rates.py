"""Rates measured in this process: what the planner prices a CPU's (or a present GPU's) work at.

The matmul rate is measured, not looked up: one large matmul in the dtype extraction would run
(fp32 on a CPU, bf16 on a GPU), timed after a warm-up.  On a CPU shared with other work that is
the rate this process gets now, which is what makes an estimate honest there.  The elementwise
rate (elements/s of a 1M-element op) and the per-operation cost (one 64k-element op) price the
passes of norms, activations and softmaxes and the many small steps of a small model, where the
matmuls alone would promise too much.  Both use the intra-op thread pool, so on a CPU crowded with
other processes they show the stalls that the model's own operations will meet.  Every function
here that looks at the machine is called ``measure_*``, so a test can forbid them all at once.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

__all__ = [
    "ProbeCosts",
    "measure_bandwidth",
    "measure_elementwise_rate",
    "measure_file_seconds",
    "measure_free_host_memory",
    "measure_fresh_memory_seconds",
    "measure_matmul_flops",
    "measure_op_seconds",
    "measure_probe_costs",
    "measure_probe_step_seconds",
]


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
    from fastmi.probe.adamw import AdamW

    z = torch.randn(layers, 8, 16, generator=torch.Generator().manual_seed(0)).to(device)
    weight = torch.zeros(layers, 32, 16, device=device, requires_grad=True)
    bias = torch.zeros(layers, 32, device=device, requires_grad=True)
    optimizer = AdamW([weight, bias], lr=1e-3, weight_decay=(0.0, 0.0))

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


def measure_free_host_memory() -> int:
    """Available host RAM (what the probe's default budget on a CPU also starts from)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
