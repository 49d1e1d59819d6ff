"""``python -m fastmi COMMAND ...``, and under torchrun one process of a multi-process run:

    torchrun --nproc_per_node 2 -m fastmi extract --model minilm --corpus demo --out runs/minilm

Each process joins the process group torchrun describes (gloo on CPUs, NCCL on GPUs); rank 0 alone
prints.  See docs/distributed.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from . import distributed
    from .cli import main as cli_main

    ctx = distributed.init_from_env()
    try:
        with distributed.quiet_unless_main(ctx):
            return cli_main(argv)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
