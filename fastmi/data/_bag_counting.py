"""The compiled loops of :func:`fastmi.data.bags.count_bags` (numba), in a module of their own so that
importing :mod:`fastmi.data.bags` does not import numba: only a process that counts bags pays for it."""

from __future__ import annotations

import numba
import numpy as np


# Sentences are short (tens to hundreds of tokens), so sorting each row and run-length encoding it
# beats any hash map; rows are independent, hence prange.  Two passes: sizes first, so the output
# is allocated once and filled in place.
@numba.njit(parallel=True, cache=True)
def distinct_per_row(tokens, token_offsets, excluded):  # pragma: no cover - compiled
    n = token_offsets.size - 1
    sizes = np.zeros(n, dtype=np.int64)
    for r in numba.prange(n):
        row = np.sort(tokens[token_offsets[r] : token_offsets[r + 1]])
        distinct = 0
        for j in range(row.size):
            if not excluded[row[j]] and (j == 0 or row[j] != row[j - 1]):
                distinct += 1
        sizes[r] = distinct
    return sizes


@numba.njit(parallel=True, cache=True)
def fill_bags(tokens, token_offsets, excluded, offsets, ids, counts):  # pragma: no cover - compiled
    n = token_offsets.size - 1
    for r in numba.prange(n):
        row = np.sort(tokens[token_offsets[r] : token_offsets[r + 1]])
        k = offsets[r] - 1
        for j in range(row.size):
            t = row[j]
            if excluded[t]:
                continue
            if j == 0 or t != row[j - 1] or k < offsets[r]:
                k += 1
                ids[k] = t
                counts[k] = 1
            else:
                counts[k] += 1
