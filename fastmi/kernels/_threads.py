"""numba's parallel loops inside torch's thread budget.

numba's OpenMP threading layer starts its pool with ``NUMBA_NUM_THREADS`` threads (every core by
default, whatever ``OMP_NUM_THREADS`` says) and, through the OpenMP runtime it shares with torch,
sets torch's intra-op thread count to that as well.  One parallel numba call in a process run with
``OMP_NUM_THREADS=1`` would otherwise leave every later matmul on all cores: a single-threaded run
that is not, and processes of a multi-process job competing for each other's cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import torch


@contextlib.contextmanager
def torch_thread_budget() -> Iterator[None]:
    """numba's parallel loops in the block use torch's thread count, and leave it as it was."""
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))  # starts the pool
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
