"""The numba loop of the bf16 mean pooling on CPU (:mod:`.masked_pool_cpu`), in a module of its own
so that importing the kernels does not import numba."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def masked_sum_bf16(bits, mask, out):
    """out[b] = sum over unmasked t of hidden[b, t] in fp32; ``bits`` is bf16 viewed as uint16."""
    rows, length, dim = bits.shape
    for b in numba.prange(rows):
        wide = np.empty(dim, np.uint32)
        values = wide.view(np.float32)  # bf16 is the top half of an fp32: shift it into place
        for t in range(length):
            if mask[b, t]:
                for j in range(dim):
                    wide[j] = np.uint32(bits[b, t, j]) << 16
                for j in range(dim):
                    out[b, j] += values[j]
