"""Results built from chosen per-sentence statistics, so a comparison's true answer is known.

Each layer's per-sentence cross-entropy is ``base + shift[layer] + difficulty + noise``: the
sentence's difficulty is shared by every layer and model (what pairing cancels), the shift sets
the layer's variational bound (H(T) - mean CE).  Errors are drawn to match, so every bound exists.
"""

from __future__ import annotations

import numpy as np

from fastmi.results.result import RecoverabilityResult
from fastmi.stats.bounds import layer_bounds
from fastmi.stats.heldout import HeldOut

H_T, M, K = 6.0, 400, 5


def model_result(
    name: str,
    kind: str,
    shifts,
    difficulty: np.ndarray,
    rows: np.ndarray,
    seed: int,
    noise: float = 0.3,
    validation_shifts=None,
    vocab_size: int = 1000,
    entropy: float = H_T,
) -> RecoverabilityResult:
    """One model whose layer l has mean held-out CE 4 + shifts[l] (+ the shared difficulty)."""
    rng = np.random.default_rng(seed)
    held = HeldOut(rows=np.asarray(rows, dtype=np.int64))
    table, training = [], {}
    depth = len(shifts) - 1
    for layer, shift in enumerate(shifts):
        ce = np.clip(4.0 + shift + difficulty + noise * rng.standard_normal(rows.size), 0.05, None)
        errors = np.clip(0.5 + 0.05 * (ce - 4) + 0.05 * rng.standard_normal(rows.size), 0, 1)
        errors_k = errors * 0.6
        held.add(layer, errors=errors, errors_k=errors_k, ce_bits=ce)
        stats = layer_bounds(errors, errors_k, ce, entropy, M, K, n_bootstrap=200)
        table.append(
            dict(
                model=name,
                layer=layer,
                rel_depth=layer / depth,
                pooling="mean",
                vocab="top:400",
                M=M,
                n_train=2000,
                n_test=rows.size,
                n_skipped=0,
                bag_recall=0.5,
                **stats,
            )
        )
        validation = (validation_shifts or shifts)[layer]
        training[str(layer)] = {"best_epoch": 5, "validation_ce_bits": 4.0 + validation, "epochs_run": 8}
    config = {"model": name, "vocab_size": vocab_size, "training": training, "source": {"kind": kind}, "seed": 0}
    return RecoverabilityResult(table, config, {name: held})


def shared_difficulty(n: int = 400, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(5 * n, size=n, replace=False))
    return rng.standard_normal(n), rows
