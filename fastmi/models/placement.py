"""Where a model's weights live: one device, or spread by accelerate over GPUs, CPU and disk.

fastmi never runs its own model-parallel executor: a model larger than one device is given to
accelerate's ``device_map="auto"`` with a ``max_memory`` budget per device, and whatever does not
fit is offloaded to CPU memory or to ``offload_dir`` on disk (weights are brought to the executing
device block by block during the forward).  The hooks of :mod:`fastmi.models.hooks` are registered on the
blocks themselves, so they catch each block's output wherever it ran.

With several processes (``torchrun``) each rank holds one replica on GPUs of its own; which ones is
decided with the other rank decisions, in :func:`fastmi.runtime.replicas.rank_devices` (re-exported
here); this module only turns the answer into ``from_pretrained`` arguments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from fastmi.runtime.replicas import parse_max_memory, rank_devices, replica_max_memory

__all__ = ["accelerate_kwargs", "rank_devices", "input_device"]


def accelerate_kwargs(
    device: torch.device | str,
    max_memory: str | dict | None,
    offload_dir: str | os.PathLike | None,
    gpus: Sequence[int] | None = None,
) -> dict:
    """``from_pretrained`` keyword arguments that let accelerate place the model.

    ``max_memory``: accelerate's dict or "0=70GiB,cpu=200GiB" (a bare size is per GPU, or the
    CPU budget on a machine without one).  ``gpus``: the GPUs this process may use (default all
    visible ones when ``device`` is cuda/auto, none on CPU).
    """
    budget = parse_max_memory(max_memory) or {}
    on_gpu = str(device) == "auto" or torch.device(str(device)).type == "cuda"
    restricted = gpus is not None  # else accelerate may use every visible GPU, with its own budget
    if gpus is None:
        gpus = list(range(torch.cuda.device_count())) if on_gpu else []
    if not gpus and "gpu" in budget:  # CPU-only: a bare size is the CPU budget
        budget["cpu"] = budget.pop("gpu")
    if gpus and (budget or restricted):
        budget = replica_max_memory(budget, gpus)
    kwargs: dict = {"device_map": "auto"}
    if budget:
        kwargs["max_memory"] = budget
    if offload_dir is not None:
        os.makedirs(offload_dir, exist_ok=True)
        kwargs["offload_folder"] = os.fspath(offload_dir)
    return kwargs


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids must go: the device the embedding layer executes on.

    With accelerate's offload the embedding weight may sit on the meta device (its data is on
    disk or in CPU memory); the hook accelerate attached knows the executing device.
    """
    embeddings = model.get_input_embeddings()
    for module in (embeddings, model):
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            device = getattr(h, "execution_device", None)
            if device is not None and not isinstance(device, dict):
                return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return embeddings.weight.device
