"""CPU benchmark: masked_pool against torch's masked mean, timed in the same run.

    python -m pytest bench/test_bench_masked_pool.py --benchmark-only

Each group holds the baseline ``(h * m[..., None]).sum(1) / m.sum(1)`` and fastmi's torch path at
one shape and dtype; pytest-benchmark's table gives the ratio, and the fastmi case records it
(``speedup_over_torch_masked_mean``, baseline median / fastmi median).  Shapes: a SmolLM-sized hidden
(d = 576) and a larger one, 30% right padding.
"""

from __future__ import annotations

import pytest
import torch

from fastmi.kernels import backend, masked_pool

SHAPES = [(32, 256, 576), (16, 512, 2048)]
_baseline_medians: dict[str, float] = {}  # median seconds of the baseline, per group


def _inputs(shape, dtype):
    rows, length, dim = shape
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, length, dim, generator=generator).to(dtype)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return hidden, mask


def _baseline(hidden, mask):
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["torch_masked_mean", "fastmi"])
def test_masked_mean(benchmark, impl, shape, dtype):
    hidden, mask = _inputs(shape, dtype)
    benchmark.group = f"masked mean {'x'.join(map(str, shape))} {str(dtype)[6:]}"
    if impl == "fastmi":
        with backend("cpu"):
            out = benchmark(masked_pool, hidden, mask, "mean")
        if benchmark.stats and benchmark.group in _baseline_medians:  # the baselines run first (impl varies slowest)
            speedup = _baseline_medians[benchmark.group] / benchmark.stats.stats.median
            benchmark.extra_info["speedup_over_torch_masked_mean"] = speedup
    else:
        out = benchmark(_baseline, hidden, mask)
        if benchmark.stats:  # None under --benchmark-disable
            _baseline_medians[benchmark.group] = benchmark.stats.stats.median
    # the two agree (the baseline sums in the input dtype: loose for bf16)
    reference = _baseline(hidden.float(), mask)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), reference, rtol=tol, atol=tol)
