"""``python -m fastmi COMMAND ...``, and under torchrun one process of a multi-process run:

    torchrun --nproc_per_node 2 -m fastmi extract --model minilm --corpus demo --out runs/minilm

Each process joins the process group torchrun describes (gloo on CPUs, NCCL on GPUs); rank 0 alone
prints.  See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from fastmi.cli import main as cli_main
    from fastmi.runtime.distributed import launched

    with launched():  # joined to torchrun's process group, if any; stdout of rank 0 only
        return cli_main(argv)


def exit_now(code: int | None) -> None:
    """Leave without the interpreter's teardown.

    By now every file fastmi wrote is closed (cache files also fsynced), and freeing the modules of
    torch and transformers one object at a time takes a second or more of CPU (each process of a
    torchrun job pays it, then the launcher waits for it) that the OS does at once.  Exit handlers
    still run and buffered output is flushed.  An uncaught exception never gets here: it takes the
    ordinary way out, traceback included."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(int(code or 0))


if __name__ == "__main__":
    exit_now(main())
