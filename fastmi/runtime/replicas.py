"""Which devices this rank's copy of the model uses, and accelerate's memory budget for them.

Under torchrun each rank holds one replica of the model.  On a node with G GPUs and a model that
needs K of them, launch G / K ranks per node: rank r places its replica on GPUs ``[rK, rK + K)``
(:func:`replica_devices`) and accelerate spreads it over those alone (:func:`replica_max_memory`).
One process uses the device it was given.  Every rank decision of model placement is here, so
:mod:`fastmi.models.placement` only turns the answer into ``from_pretrained`` arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastmi.runtime.distributed import Context, context

__all__ = ["rank_devices", "probe_device", "replica_devices", "replica_max_memory", "parse_max_memory"]


def rank_devices(
    device: str | torch.device, devices_per_replica: int = 1, ctx: Context | None = None
) -> tuple[str, list[int] | None]:
    """This rank's device spec and GPUs: ``("cuda:r", None)`` for one GPU per rank, ``("auto",
    [GPUs of its replica])`` for a replica over several, the device unchanged on CPU."""
    ctx = ctx or context()
    text = str(device)
    if devices_per_replica > 1:
        if not torch.cuda.is_available():
            raise ValueError("--devices-per-replica needs CUDA GPUs; on CPU use --max-memory cpu=... --offload-dir")
        return "auto", replica_devices(ctx.local_rank, ctx.local_world, torch.cuda.device_count(), devices_per_replica)
    if ctx.distributed and text == "cuda":  # one GPU per rank
        return f"cuda:{ctx.local_rank}", None
    if text == "auto" and ctx.distributed:  # "all GPUs" means this rank's share of them
        per_rank = max(torch.cuda.device_count() // ctx.local_world, 1)
        return "auto", replica_devices(ctx.local_rank, ctx.local_world, torch.cuda.device_count(), per_rank)
    return text, None


def probe_device(device: str | None, devices_per_replica: int = 1, ctx: Context | None = None) -> str | None:
    """Where this rank probes: under torchrun on GPUs the first GPU of its replica, unless a device
    other than plain "cuda" was asked for; one process: ``device`` as given."""
    ctx = ctx or context()
    if ctx.distributed and torch.cuda.is_available() and device in (None, "cuda"):
        return f"cuda:{ctx.local_rank * max(devices_per_replica, 1)}"
    return device


def replica_devices(local_rank: int, local_world: int, device_count: int, devices_per_replica: int) -> list[int]:
    """The GPUs of this rank's model replica: ``devices_per_replica`` consecutive ones.

    8 GPUs, a model that needs 2: launch 4 ranks per node; rank r gets GPUs [2r, 2r + 1]
    (data parallel over 4 replicas, each replica split over 2 GPUs by accelerate).
    """
    if devices_per_replica < 1:
        raise ValueError(f"devices_per_replica must be at least 1, got {devices_per_replica}")
    if not 0 <= local_rank < local_world:
        raise ValueError(f"local rank {local_rank} is outside 0..{local_world - 1}")
    needed = local_world * devices_per_replica
    if needed > device_count:
        raise ValueError(
            f"{local_world} processes per node x {devices_per_replica} devices per replica need {needed} GPUs, "
            f"this node has {device_count}; launch {max(device_count // devices_per_replica, 1)} processes per node "
            "(torchrun --nproc_per_node) or lower --devices-per-replica"
        )
    first = local_rank * devices_per_replica
    return list(range(first, first + devices_per_replica))


def parse_max_memory(text: str | dict | None) -> dict[int | str, str] | None:
    """``"0=70GiB,1=70GiB,cpu=200GiB"`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``.

    Keys: GPU indices, ``cpu``, ``disk``; a bare size (``"70GiB"``) means "each GPU", under key
    ``"gpu"`` (resolved by :func:`replica_max_memory`).  Sizes are accelerate's strings.
    """
    if text is None or isinstance(text, dict):
        return text
    out: dict[int | str, str] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, size = part.partition("=")
        if not sep:
            key, size = "gpu", key
        key = key.strip().lower()
        if not size.strip() or not (key.isdigit() or key in ("cpu", "disk", "gpu")):
            raise ValueError(
                f"cannot read --max-memory {text!r}: expected e.g. '70GiB' or '0=70GiB,1=70GiB,cpu=200GiB'"
            )
        out[int(key) if key.isdigit() else key] = size.strip()
    return out


def replica_max_memory(max_memory: dict[int | str, str] | None, devices: Sequence[int]) -> dict[int | str, str]:
    """accelerate's ``max_memory`` for one replica: only its own GPUs (others get nothing), plus CPU.

    A per-GPU size (key ``"gpu"``) applies to each of ``devices``; explicit indices are taken as is
    but must belong to the replica.
    """
    max_memory = dict(max_memory or {})
    per_gpu = max_memory.pop("gpu", None)
    foreign = [k for k in max_memory if isinstance(k, int) and k not in devices]
    if foreign:
        raise ValueError(f"--max-memory names GPUs {foreign}, but this replica owns GPUs {list(devices)}")
    out: dict[int | str, str] = {}
    for gpu in devices:
        size = max_memory.pop(gpu, per_gpu)
        if size is None:
            size = f"{torch.cuda.get_device_properties(gpu).total_memory * 9 // 10 >> 20}MiB"
        out[gpu] = size
    out.update(max_memory)  # cpu, disk
    return out
