"""Run by tests/test_finetune_clipping_ddp.py: two gloo processes, each taking one SGD step of the
RecoverabilityTrainer under DDP (4 of the batch's 8 sentences per rank) for each arm, the model's
update written for the test to read."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

# (lambda, scale of the probes' start): a term of zero gradient, then one that passes a gradient.
ARMS = {"control": (0.0, 0.0), "silent_term": (3.0, 0.0), "control_real": (0.0, 1.0), "real_term": (3.0, 1.0)}
LIMIT = 1e-3  # max_grad_norm, below every arm's gradient norm


def worker(rank: int, out: Path, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    from tests.test_finetune_clipping import _one_sgd_step

    updates = {
        arm: _one_sgd_step(out / "llama", lam, LIMIT, scale, out / f"rank{rank}", batch_size=4, ddp_backend="gloo")
        for arm, (lam, scale) in ARMS.items()
    }
    save_file(updates, str(out / f"updates_rank{rank}.safetensors"))


if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(Path(sys.argv[1]), int(sys.argv[2])), nprocs=2, join=True)
