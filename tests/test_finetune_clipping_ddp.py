"""Per-term clipping under DDP (two gloo processes): the ranks take the same step, a term of zero
gradient leaves the own loss's step as the control's, and a real term adds one step of its own
clipped length.  The term's gradient is taken apart from DDP's backward, so it is averaged over the
ranks by hand before its norm is taken; this checks that the ranks agree on it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.ddp_clip_worker import LIMIT
from tests.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_term_is_clipped_on_its_own_under_ddp(tmp_path):
    make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_clip_worker.py"), str(tmp_path), str(_free_port())],
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"updates_rank{rank}.safetensors")) for rank in (0, 1)]
    for arm in ranks[0]:  # DDP: every rank takes the same step
        assert torch.allclose(ranks[0][arm], ranks[1][arm], rtol=1e-5, atol=1e-10), arm
    step = ranks[0]
    assert float(step["control"].norm()) == pytest.approx(LIMIT, rel=1e-3)
    assert torch.allclose(step["silent_term"], step["control"], rtol=1e-5, atol=1e-10)
    assert torch.allclose(step["control_real"], step["control"], rtol=1e-5, atol=1e-10)
    term_step = step["real_term"] - step["control_real"]
    assert float(term_step.norm()) == pytest.approx(LIMIT, rel=1e-3)
    assert float(step["real_term"].norm()) > 1.01 * LIMIT
