"""How a plan says what does not fit, and the change that makes it fit."""

from __future__ import annotations

from dataclasses import asdict

from fastmi.probe.memory import ProbeMemory, format_bytes

__all__ = [
    "batch_too_large",
    "counted",
    "disk_offload_advice",
    "fp32_cache_advice",
    "gpu_offload_advice",
    "probe_advice",
    "probe_does_not_fit",
]

# The alphabets a probe that does not fit is offered, largest first: the first that fits is named.
SMALLER_ALPHABETS = (65536, 32768, 16384, 8192, 4096, 2048, 1024)


def counted(n: int, thing: str) -> str:
    """ "1 GPU", "2 GPUs"."""
    return f"{n} {thing}" + ("" if n == 1 else "s")


def disk_offload_advice() -> str:
    return (
        "the weights are larger than host memory: accelerate offloads the rest to disk (slow); "
        "a GPU machine or a smaller model is the real fix"
    )


def gpu_offload_advice(
    weight_bytes: int, need: float, margin: float, gpus: int, memory: int, rest: int, offload: str, per_replica: int
) -> str:
    """Weights (``need`` bytes with ``margin`` headroom) larger than ``gpus`` GPUs of ``memory`` bytes."""
    return (
        f"the weights ({format_bytes(weight_bytes)}) need {format_bytes(need)} with {margin:.0%} "
        f"headroom for activations and buffers, more than {counted(gpus, 'GPU')} of "
        f"{format_bytes(memory)}: accelerate offloads {format_bytes(rest)} to {offload}; "
        f"{counted(per_replica, 'GPU')} would hold them without offload"
    )


def batch_too_large(batch_size: int, fit: int) -> str:
    return (
        f"an extraction batch of {batch_size} sentences needs more activation memory than "
        f"is left next to the weights; use a batch of at most {max(fit, 1)}"
    )


def probe_does_not_fit(memory: ProbeMemory, budget: int) -> str:
    return (
        f"one layer's probe needs {format_bytes(memory.shared_bytes + memory.layer_bytes)} "
        f"but a device offers it {format_bytes(budget)}"
    )


def probe_advice(memory: ProbeMemory, budget: int) -> list[str]:
    """The changes that make a probe fit ``budget``: a smaller alphabet, the unembedding probe, more memory."""
    tips = []
    for k in SMALLER_ALPHABETS:
        if k < memory.alphabet and ProbeMemory(**{**asdict(memory), "alphabet": k}).fits(budget):
            tips.append(f"--vocab top:{k} (an alphabet of {k} fits)")
            break
    if memory.probe != "unembedding" and ProbeMemory(**{**asdict(memory), "probe": "unembedding"}).fits(budget):
        tips.append("--probe unembedding (trains A [d, d] through the frozen output embedding)")
    tips.append("GPUs with more memory, or fewer sentences (the features of every sentence are on the device)")
    return tips


def fp32_cache_advice(cache_bytes: int) -> str:
    return (
        f"the fp32 cache ({format_bytes(cache_bytes)}) is larger than host memory: --cache-dtype bf16 "
        "halves it (the probe streams one layer group at a time either way)"
    )
