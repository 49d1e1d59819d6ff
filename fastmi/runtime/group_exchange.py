"""Probe layer groups over several processes: who trains which, and every result on every rank.

Groups of layers are trained whole, one rank each (as EleutherAI's sparsify deals modules out to
ranks): rank 0 lists the groups no earlier run has saved and the list is dealt round-robin, so a
resumed run spreads what is left over every rank.  When all are done every rank gets every
group's result, either through files they can all read (each rank saved its own; a barrier, then
each reads them back) or in memory (gathered from every rank).  The groups do not depend on the
number of processes, so N processes give the numbers of one.  One process: its list, its results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from fastmi.runtime import distributed

__all__ = ["GroupExchange"]

K = TypeVar("K")
V = TypeVar("V")


class GroupExchange(Generic[K, V]):
    """The ranks' side of one probe run's layer groups (see the module docstring)."""

    def __init__(self, ctx: distributed.Context | None = None) -> None:
        self.ctx = ctx or distributed.context()

    def make_directory(self, path: Path) -> str | None:
        """Rank 0 creates ``path`` (and its parents) before any rank goes on; every rank gets None
        if it was made, else why not, so that all ranks fall back together."""

        def make() -> str | None:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                return str(err)
            return None

        return distributed.from_main(make, "create the probe group directory", self.ctx)

    def deal(self, list_pending: Callable[[], list[K]]) -> list[K]:
        """This rank's share of what ``list_pending()`` returns on rank 0 (the others do not run it,
        so every rank deals out the same list, decided before anyone trains)."""
        pending = distributed.from_main(list_pending, "list the saved probe groups", self.ctx)
        return distributed.my_share(pending, self.ctx)

    def gather(self, mine: Mapping[K, V], in_files: bool) -> dict[K, V]:
        """Once every rank has finished its share: ``in_files``, this rank's results after every
        rank has saved its own (the caller reads the others'); otherwise every rank's results."""
        if in_files:
            distributed.barrier()
            return dict(mine)
        found: dict[K, V] = {}
        for theirs in distributed.all_gather(dict(mine)):
            found.update(theirs)
        return found
