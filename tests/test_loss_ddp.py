"""DDP with 2 gloo processes: the gradients equal one process on the concatenated batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from tests.ddp_worker import TinyModel, full_batch

ROOT = Path(__file__).resolve().parent.parent


def test_ddp_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)],
        check=True,
        env=env,
        timeout=600,
        capture_output=True,
    )
    model = TinyModel()
    ids, mask = full_batch()
    model(ids, mask).backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"grads_rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for name, want in expected.items():
            assert want.abs().sum() > 0, name  # every parameter really gets a gradient
            rel = (got[name] - want).norm() / want.norm()
            assert rel <= 1e-5, f"{name}: relative difference {float(rel):.2e}"
