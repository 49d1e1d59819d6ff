"""Several processes on one job: who am I, who does what, and waiting for each other.

fastmi runs as one process or as N processes launched by ``torchrun --nproc_per_node N -m fastmi
COMMAND ...`` (see docs/distributed.md).  Rank and world size come from :mod:`torch.distributed`
whenever a process group is initialised, so the Python API works the same under any launcher that
initialises one; :func:`init_from_env` does it for the CLI (gloo on CPUs, NCCL on GPUs).

Division of work (every split here is a pure function of the work list and the world size):

* extraction: shards of corpus rows, each taken by the first rank free to take it (:func:`take_turns`);
* probing: layer groups, dealt out round-robin (:mod:`fastmi.probe.groups`);
* models larger than one device: each rank is one replica over ``devices_per_replica`` GPUs of its
  node (:func:`replica_devices`), placed by accelerate.

Rank 0 alone prints, draws progress bars and writes the files every rank needs (split.json,
results); the others wait for it at a barrier.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = [
    "Context",
    "context",
    "init_from_env",
    "shutdown",
    "barrier",
    "broadcast",
    "all_gather",
    "my_share",
    "take_turns",
    "main_first",
    "replica_devices",
    "replica_max_memory",
    "parse_max_memory",
]

T = TypeVar("T")
# Ranks wait at barriers while another rank does a long piece of work (a whole shard of a large
# model, one probe group); the default 30 minutes is too short for that, so waits are long.
# A dead rank does not leave the others waiting forever: torchrun stops them when one fails.
TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world`` (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def context() -> Context:
    """Rank and world size from torch.distributed (one process when no group is initialised)."""
    if not _initialised():
        return Context()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return Context(rank, world, local_rank, local_world)


def init_from_env() -> Context:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_*).

    Does nothing for a single process or when a group already exists.  NCCL when CUDA is
    available (each rank then owns ``cuda:LOCAL_RANK`` by default), gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not _initialised():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend=backend, timeout=TIMEOUT)
    return context()


def shutdown() -> None:
    if _initialised():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op for one process)."""
    if _initialised() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def broadcast(value: T, src: int = 0) -> T:
    """``value`` as rank ``src`` has it, on every rank (any picklable object; in-memory only)."""
    if not _initialised() or torch.distributed.get_world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(value: T) -> list[T]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank."""
    if not _initialised() or torch.distributed.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def my_share(items: Sequence[T], ctx: Context | None = None) -> list[T]:
    """This rank's items: every ``world``-th one from position ``rank`` (round-robin, disjoint,
    together all of them; neighbouring shards of similar length land on different ranks)."""
    ctx = ctx or context()
    return list(items[ctx.rank :: ctx.world])


def take_turns(items: Sequence[T], name: str, ctx: Context | None = None) -> Iterator[T]:
    """This rank's items, one at a time, each to the first rank that is free to take it.

    A counter in the process group's key-value store (the one torchrun and ``init_process_group``
    set up) hands out positions in ``items``: a rank asks for the next one when it has finished
    the last, so items of uneven cost, and a rank that starts late (rank 0 first writes the files
    every rank needs), even out.  ``name`` keys the counter: the same on every rank and new for
    every list (rank 0 makes one and broadcasts it with the list).  Who takes what depends on
    timing, so this is for work whose result does not depend on who does it.  One process, or a
    group without a store: :func:`my_share`.
    """
    ctx = ctx or context()
    store = _store() if ctx.world > 1 else None
    if store is None:
        yield from my_share(items, ctx)
        return
    while (position := store.add(name, 1) - 1) < len(items):
        yield items[position]


def _store():
    """The default process group's key-value store, or None."""
    if not _initialised():
        return None
    try:
        return torch.distributed.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


@contextlib.contextmanager
def main_first(ctx: Context | None = None) -> Iterator[bool]:
    """Rank 0 runs the block first (it writes a shared file), then the others run it (they read
    it).  Yields whether this is rank 0.  An error on rank 0 stops the job with it (torchrun ends
    the other ranks), so nobody reads a half-made file."""
    ctx = ctx or context()
    if not ctx.is_main:
        barrier()
    yield ctx.is_main
    if ctx.is_main:
        barrier()


@contextlib.contextmanager
def quiet_unless_main(ctx: Context | None = None) -> Iterator[None]:
    """stdout of ranks other than 0 goes nowhere: one table, one summary (errors still show), and
    their transformers loading bars are off."""
    ctx = ctx or context()
    if ctx.is_main:
        yield
        return
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
        sys.stdout.flush()


# ---- placement of a model over several devices ------------------------------------------------
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
