"""A list of work items shared by every rank: each item goes to the first rank free to take it.

Extraction cuts the corpus into shards of uneven cost (long sentences, a rank that starts late
because rank 0 first writes the files every rank needs).  Dealing them out in advance would leave
ranks idle while one finishes its share; here a rank asks for the next item whenever it has
finished the last.  A counter in the process group's key-value store hands out positions in the
list, and a second one adds up what every rank has finished (rank 0's progress bar counts the whole
job).  Who takes what depends on timing, so this is for work whose result does not depend on who
does it.  One process, or a group without a store: the round-robin share of
:func:`fastmi.runtime.distributed.my_share`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from fastmi.runtime import distributed
from fastmi.runtime.notices import notice

__all__ = ["ShardQueue"]

T = TypeVar("T")
R = TypeVar("R")


class ShardQueue(Generic[T]):
    """``items``, the same list on every rank, drawn from by all of them.

    ``name`` keys the store's counters: the same on every rank and new for every list (use
    :meth:`listed_by_main`, which makes one on rank 0 and sends it with the list).
    """

    def __init__(self, items: Sequence[T], name: str, ctx: distributed.Context | None = None) -> None:
        self.items = list(items)
        self.name = name
        self.ctx = ctx or distributed.context()
        self._store = distributed.group_store() if self.ctx.distributed else None
        self._finished_here = 0

    @classmethod
    def listed_by_main(
        cls, prepare: Callable[[], tuple[R, Sequence[T]]], attach: Callable[[], R], what: str
    ) -> tuple[R, ShardQueue[T]]:
        """Rank 0 runs ``prepare() -> (resource, items)`` (it opens the resource and lists the work);
        every other rank ``attach()``-es to the resource and gets the same list in a queue of the
        same name (:func:`fastmi.runtime.distributed.prepared_by_main`, errors included)."""

        def prepare_and_name() -> tuple[R, tuple[list[T], str]]:
            resource, items = prepare()
            return resource, (list(items), f"fastmi.queue/{uuid.uuid4().hex}")

        resource, (items, name) = distributed.prepared_by_main(prepare_and_name, attach, what)
        return resource, cls(items, name)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        """This rank's items, one at a time: the next one is taken when the loop asks for it."""
        if self._store is None:
            yield from distributed.my_share(self.items, self.ctx)
            return
        while (position := self._store.add(f"{self.name}/taken", 1) - 1) < len(self.items):
            yield self.items[position]

    def finish(self, weight: int = 1) -> int:
        """Count an item this rank has finished (``weight``: its size, e.g. sentences); return the
        weight finished so far by every rank together."""
        self._finished_here += int(weight)
        if self._store is None:
            return self._finished_here
        return int(self._store.add(f"{self.name}/finished", int(weight)))

    def note_idle_ranks(self, unit: str, hint: str) -> None:
        """Say (once, on rank 0) that fewer items than ranks leave some ranks nothing to do."""
        if 0 < len(self.items) < self.ctx.world:
            idle = f"{len(self.items)} unfinished {unit} for {self.ctx.world} processes"
            notice(f"{idle}: some have nothing to do; {hint}")
