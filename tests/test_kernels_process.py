"""Process-level properties of fastmi.kernels: a cheap import, and the same bits in any process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_leaves_torch_dynamo_out():
    # torch._dynamo costs seconds to import; the kernels load it only once torch.compile is in use.
    out = _python("""
        import sys
        import fastmi.kernels
        print('torch._dynamo' in sys.modules)
    """)
    assert out.strip() == "False"


# Loss and gradients of every path and reduction, hashed to bytes.
_RUN = """
    import hashlib, torch
    from fastmi.kernels import backend, bag_cross_entropy, bag_topk
    from test_bag_cross_entropy import make_bags, make_inputs
    digest = hashlib.sha256()
    for path in ("cpu", "triton"):
        for reduction in ("mean", "none"):
            for dtype in (torch.float32, torch.bfloat16):
                torch.manual_seed(3)
                z, weight, bias = make_inputs(2, 13, dtype=dtype)
                with backend(path):
                    loss = bag_cross_entropy(z, weight, bias, make_bags(13), reduction, block_rows=4)
                    grads = torch.autograd.grad(loss, (z, weight, bias), torch.ones_like(loss))
                    ids, lse = bag_topk(z.detach(), weight.detach(), bias.detach(), 5)
                for t in (loss, *grads, ids, lse):
                    digest.update(t.detach().float().contiguous().numpy().tobytes())
    print(digest.hexdigest())
"""


def test_two_processes_give_identical_bits():
    env = {"TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    first = _python(_RUN, **env).strip().splitlines()[-1]
    second = _python(_RUN, **env).strip().splitlines()[-1]
    assert len(first) == 64 and first == second
