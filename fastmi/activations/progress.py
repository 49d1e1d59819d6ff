"""The extraction's progress bar: sentences, moved after every batch, for the whole job.

It moves after every batch, not every shard: one shard of a large model is minutes of work.  The
total is every unfinished sentence of every rank; under torch.distributed only rank 0 draws, so its
own sentences count batch by batch and the other ranks' as they finish their shards (the shard
queue adds up what every rank has finished).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SentenceBar"]


class SentenceBar:
    """A tqdm bar in sentences, or nothing (``enabled`` False)."""

    def __init__(self, total: int, enabled: bool, name: str) -> None:
        self.bar = None
        self.listed = 0  # sentences of shards finished, by any rank
        self.running = 0  # sentences of this rank's current shard done so far
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=int(total), unit="sent", desc=f"extract {Path(str(name)).name}", dynamic_ncols=True)

    def __enter__(self):
        return self

    def batch_done(self, rows: int) -> None:
        self.running += int(rows)
        self._show()

    def shards_done(self, listed: int) -> None:
        """``listed``: sentences of every shard finished so far, this rank's just finished one included."""
        self.listed, self.running = max(self.listed, int(listed)), 0
        self._show()

    def _show(self) -> None:
        if self.bar is not None and self.listed + self.running > self.bar.n:  # a stale count never moves it back
            self.bar.update(self.listed + self.running - self.bar.n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
