"""One plain line on stderr for what a user should know but need not act on.

A resumed cache, a finished one reused, shards found damaged and redone, sentences truncated at
``max_length``: each is one line starting with ``fastmi:``, written through tqdm so that it never
breaks a progress bar, and never a ``UserWarning`` with its file and line number (those are for
programming mistakes, not for the state of a run).

Under torchrun every rank runs the same code and would say the same thing once per rank; only
rank 0 speaks (errors still show on every rank: they are not notices).
"""

from __future__ import annotations

import os
import sys

__all__ = ["notice"]


def notice(text: str) -> None:
    if _rank() != 0:
        return
    from tqdm.auto import tqdm

    tqdm.write(f"fastmi: {text}", file=sys.stderr)


def _rank() -> int:
    """torch.distributed's rank once a group exists; before that (a notice while the model loads)
    the RANK that torchrun puts in every process's environment."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0
