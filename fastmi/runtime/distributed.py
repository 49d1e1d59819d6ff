"""Several processes on one job: who am I, who does what, and waiting for each other.

fastmi runs as one process or as N processes launched by ``torchrun --nproc_per_node N -m fastmi
COMMAND ...`` (see docs/distributed.md).  Rank and world size come from :mod:`torch.distributed`
whenever a process group is initialised, so the Python API works the same under any launcher that
initialises one; :func:`init_from_env` does it for the CLI (gloo on CPUs, NCCL on GPUs).

This module and its neighbours in :mod:`fastmi.runtime` are the only code that talks to
torch.distributed or asks which rank it is; the rest of fastmi states what is shared and what is
divided, through these helpers, and reads the same for one process and for N:

* :func:`from_main` / :func:`prepared_by_main`: rank 0 decides (lists the work, opens the cache),
  every rank gets the decision, or rank 0's error;
* :func:`on_main` / :func:`main_only`: what one process does for the job (shared files, progress bars);
* :func:`my_share`: a round-robin share of a list; :class:`fastmi.runtime.shard_queue.ShardQueue`:
  items taken by whichever rank is free; :class:`fastmi.runtime.group_exchange.GroupExchange`:
  probe groups dealt out and their results brought back to every rank;
* :func:`average_gradients`: parameters outside a DDP-wrapped module, synchronised by hand;
* :mod:`fastmi.runtime.replicas`: the devices of each rank's model replica.

Rank 0 alone prints, draws progress bars and writes the files every rank needs (split.json,
results); the others wait for it at a barrier.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = [
    "Context",
    "context",
    "trainer_step_sentences",
    "init_from_env",
    "shutdown",
    "launched",
    "barrier",
    "broadcast",
    "all_gather",
    "my_share",
    "from_main",
    "prepared_by_main",
    "on_main",
    "main_only",
    "job_label",
    "group_store",
    "average_gradients",
    "main_first",
    "quiet_unless_main",
]

T = TypeVar("T")
R = TypeVar("R")
# Ranks wait at barriers while another rank does a long piece of work (a whole shard of a large
# model, one probe group); the default 30 minutes is too short for that, so waits are long.
# A dead rank does not leave the others waiting forever: torchrun stops them when one fails.
TIMEOUT = datetime.timedelta(hours=6)
# Errors of rank 0 that the other ranks raise as the same type (anything else: RuntimeError).
_SHARED_ERRORS = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}


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


def trainer_step_sentences(args) -> int:
    """Sentences one optimizer step of a ``transformers.Trainer`` with TrainingArguments ``args`` takes
    over every process: the per-device batch x the processes x the accumulation steps."""
    return args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps


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


@contextlib.contextmanager
def launched() -> Iterator[Context]:
    """One process of the job torchrun launched (or the only one): joined to the group, quiet on
    stdout unless it is rank 0, and out of the group again when the block ends."""
    ctx = init_from_env()
    try:
        with quiet_unless_main(ctx):
            yield ctx
    finally:
        shutdown()


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


# ---- rank 0 decides, every rank follows ---------------------------------------------------------
def prepared_by_main(
    prepare: Callable[[], tuple[R, T]], attach: Callable[[], R], what: str, ctx: Context | None = None
) -> tuple[R, T]:
    """Rank 0 runs ``prepare() -> (resource, shared)``; every other rank gets ``shared`` and
    ``attach()``-es to the resource rank 0 opened.  One process: just ``prepare()``.

    An error of rank 0 reaches every rank (``"rank 0 could not {what}: ..."``, as a ValueError,
    FileNotFoundError or RuntimeError), so no rank waits for a list that never comes.
    """
    ctx = ctx or context()
    if not ctx.distributed:
        return prepare()
    if ctx.is_main:
        try:
            resource, shared = prepare()
        except Exception as err:
            broadcast((type(err).__name__, str(err)))
            raise
        broadcast(("ok", shared))
        return resource, shared
    status, payload = broadcast(None)
    if status != "ok":
        raise _SHARED_ERRORS.get(status, RuntimeError)(f"rank 0 could not {what}: {payload}")
    return attach(), payload


def from_main(compute: Callable[[], T], what: str, ctx: Context | None = None) -> T:
    """``compute()`` as rank 0 computed it, on every rank (the others do not run it); rank 0's
    error reaches every rank as in :func:`prepared_by_main`."""
    return prepared_by_main(lambda: (None, compute()), lambda: None, what, ctx)[1]


def on_main(work: Callable[..., T], *args: Any, ctx: Context | None = None, **kwargs: Any) -> T | None:
    """``work(*args, **kwargs)`` on rank 0 alone (what one process does for the whole job: a shared
    file, a warning said once); None on the other ranks, which do not wait for it."""
    ctx = ctx or context()
    return work(*args, **kwargs) if ctx.is_main else None


def main_only(wanted: bool, ctx: Context | None = None) -> bool:
    """``wanted`` on rank 0, False elsewhere: one progress bar, one printed table per job."""
    ctx = ctx or context()
    return bool(wanted) and ctx.is_main


def job_label(name: str, ctx: Context | None = None) -> str:
    """``name``, and for several processes how many (``"minilm (4 processes)"``)."""
    ctx = ctx or context()
    return f"{name} ({ctx.world} processes)" if ctx.distributed else name


def group_store():
    """The default process group's key-value store (the one torchrun and ``init_process_group`` set
    up), or None: no group, or a backend without one."""
    if not _initialised():
        return None
    try:
        return torch.distributed.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Each gradient replaced by its mean over the ranks, in place (no-op for one process).

    For parameters DDP does not see (a probe beside a DDP-wrapped model).  Every rank must pass the
    same parameters in the same order, each with a gradient on every rank or on none.
    """
    if not _initialised() or (world := torch.distributed.get_world_size()) == 1:
        return
    for p in parameters:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)


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
