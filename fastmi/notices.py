"""One plain line on stderr for what a user should know but need not act on.

A resumed cache, a finished one reused, shards found damaged and redone, sentences truncated at
``max_length``: each is one line starting with ``fastmi:``, written through tqdm so that it never
breaks a progress bar, and never a ``UserWarning`` with its file and line number (those are for
programming mistakes, not for the state of a run).
"""

from __future__ import annotations

import sys

__all__ = ["notice"]


def notice(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"fastmi: {text}", file=sys.stderr)
