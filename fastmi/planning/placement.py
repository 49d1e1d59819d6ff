"""Where a model's weights go: data-parallel replicas, devices per replica, offload, and the extraction batch.

Weights in the extraction dtype need ceil(bytes * (1 + margin) / device memory) devices per replica;
the GPUs hold gpus // that many replicas; a model larger than all the GPUs of one replica is
offloaded by accelerate (CPU, then disk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fastmi.models.shape import ModelShape
from fastmi.planning.advice import batch_too_large, disk_offload_advice, gpu_offload_advice
from fastmi.planning.hardware import Hardware
from fastmi.planning.workload import Workload

__all__ = ["CPU_BATCH_SIZE", "MAX_GPU_BATCH", "WEIGHT_MARGIN", "Placement", "place"]

WEIGHT_MARGIN = 0.15  # activations, buffers and fragmentation on a device that holds weights
CPU_BATCH_SIZE = 32  # fastmi.extract's default
MAX_GPU_BATCH = 1024


@dataclass
class Placement:
    weight_bytes: int
    batch_size: int = 0
    replicas: int = 1
    devices_per_replica: int = 1
    offload: str | None = None  # "cpu", "cpu+disk" or "disk"
    offloaded_bytes: int = 0  # weight bytes (with the headroom) that do not fit on the devices of one replica
    problems: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)


def place(shape: ModelShape, hw: Hardware, work: Workload, batch_size: int | None) -> Placement:
    """Replicas, devices per replica, offload and the extraction batch (see the module docstring)."""
    dtype_bytes = 2 if hw.device == "cuda" else 4  # load_model's default: bf16 on GPUs, fp32 on a CPU
    weight_bytes = shape.loaded_parameters * dtype_bytes
    need = weight_bytes * (1 + WEIGHT_MARGIN)
    out = Placement(weight_bytes)
    if hw.device == "cpu":
        out.batch_size = batch_size or CPU_BATCH_SIZE
        if need > hw.memory:
            out.offload, out.offloaded_bytes = "disk", int(need - hw.memory)
            out.advice.append(disk_offload_advice())
        return out
    per_replica = math.ceil(need / hw.memory)
    if per_replica <= hw.count:
        out.devices_per_replica, out.replicas = per_replica, hw.count // per_replica
        left = hw.memory - weight_bytes / per_replica
    else:
        out.devices_per_replica = hw.count
        rest = int(need - hw.count * hw.memory)
        out.offloaded_bytes = rest
        out.offload = "cpu" if rest <= 0.9 * hw.host_memory else "cpu+disk"
        out.advice.append(
            gpu_offload_advice(weight_bytes, need, WEIGHT_MARGIN, hw.count, hw.memory, rest, out.offload, per_replica)
        )
        left = hw.memory * WEIGHT_MARGIN / (1 + WEIGHT_MARGIN)
    # Activations of one token through a block: about (block weights / d) values of 2 bytes.
    per_token = 2.0 * max(shape.block_parameters) / shape.hidden_size
    fit = int(0.5 * left / max(per_token * work.max_width, 1))
    if batch_size is not None:
        out.batch_size = batch_size
    else:
        largest = MAX_GPU_BATCH if not out.offload else 8 * MAX_GPU_BATCH
        out.batch_size = max(1, min(work.sentences, largest, fit))
    if out.batch_size > fit:
        out.problems.append(batch_too_large(out.batch_size, fit))
    return out
