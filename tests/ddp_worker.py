"""Run by tests/test_loss_ddp.py: two processes (torch.multiprocessing, gloo), each putting one rank's
half of the batch through a DDP-wrapped model + MultiLayerRecoverabilityLoss; the synchronised
gradients are written for the test to read."""

from __future__ import annotations

import faulthandler
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from fastmi.finetune.loss import MultiLayerRecoverabilityLoss

V, D, SPECIAL = 40, 12, (1, 2)


class TinyModel(torch.nn.Module):
    """Embedding, two blocks, and the loss on layers 1 and 2 (all one module, as DDP wraps it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(V, D)
        self.blocks = torch.nn.ModuleList(
            [torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.Tanh()) for _ in range(2)]
        )
        self.recover = MultiLayerRecoverabilityLoss(D, V, layers=[1, 2], layer_weights=[0.5, 1.5], exclude_ids=SPECIAL)
        with torch.no_grad():
            for p in self.recover.parameters():
                p.copy_(torch.randn(p.shape) * 0.5)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = [self.embed(ids)]
        for block in self.blocks:
            states.append(block(states[-1]))
        return self.recover(states, mask, ids)


def full_batch(B: int = 8, T: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    mask[6, 2:] = 0
    ids[0, 0], ids[5, 3] = 1, 2
    return ids, mask


# A rank stuck for this long prints every thread's stack and exits, so that a hang in gloo shows where
# it is instead of holding the test until its subprocess timeout.
HANG_SECONDS = 120


def worker(rank: int, world: int, out: Path) -> None:
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out / 'store'}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=HANG_SECONDS),
    )
    model = torch.nn.parallel.DistributedDataParallel(TinyModel())
    ids, mask = full_batch()
    rows = slice(rank * ids.shape[0] // world, (rank + 1) * ids.shape[0] // world)
    model(ids[rows], mask[rows]).backward()
    grads = {name: p.grad.contiguous() for name, p in model.module.named_parameters()}
    # Written whole, then renamed: the test reads a rank's gradients only if they were saved complete.
    partial = out / f"grads_rank{rank}.partial"
    save_file(grads, str(partial))
    partial.rename(out / f"grads_rank{rank}.safetensors")
    # DDP's reducer goes before the group it talks through: freed after destroy_process_group, as the
    # function's locals would be on return, it has hung a rank now and then (gloo, torch 2.13).
    del model
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(2, Path(sys.argv[1])), nprocs=2, join=True)
