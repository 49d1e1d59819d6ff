"""The dtype in which z and W meet: one rule for every fused op and backend.

Tensor cores (and ``tl.dot``) take two operands of one dtype, so a mixed call (z fp32 from
:func:`~fastmi.kernels.masked_pool`, W bf16 from a module cast to bf16; or the reverse) must round
one of them.  The rule, in order:

1. autocast on for the inputs' device: autocast's dtype (what ``nn.Linear`` would use there);
2. otherwise the weight's dtype.  W is the large operand ([V, d] against [B, d]): rounding z to it
   costs a [B, d] copy, while widening W would copy [V, d] on every call.  A bf16 probe thus runs
   on tensor cores whatever z is; an fp32 probe with bf16 features runs in fp32.

Products always accumulate in fp32, and max / sum / LSE / gradient accumulators are fp32.
"""

from __future__ import annotations

import torch


def compute_dtype(z: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype z and weight are rounded to before their products (see the module docstring)."""
    device_type = z.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype
