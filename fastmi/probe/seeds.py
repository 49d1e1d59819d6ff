"""Several probes per layer (``probe_seeds``): their scores averaged, and what each seed gives.

The N probes of a layer differ in training order (seeds seed .. seed + N - 1) and, for the linear
probe, in their start: the first starts from the prior-only probe (W = 0, as a single probe does),
each further one from a random W near 0 (:func:`fastmi.probe.training.perturb_start`).  The
unembedding probe's start is chosen on validation and is the same for every seed.  The per-sentence
scores averaged over the seeds are those of the probe that picks one of the N at random, itself a
fixed decoder, so the bounds stay valid (docs/theory.md §5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastmi.probe.evaluation import HeldOutScores

__all__ = ["seed_mean", "seed_statistics_of", "seed_log"]


def seed_mean(fits: list) -> HeldOutScores:
    """Per-sentence scores averaged over the probes of every seed: those of the probe that draws one
    of them at random (docs/theory.md §5)."""
    if len(fits) == 1:
        return fits[0][1]
    parts = [s for _, s in fits]
    return HeldOutScores(*(torch.stack([getattr(s, f) for s in parts]).mean(0) for f in HeldOutScores.FIELDS))


def seed_statistics_of(fits: list) -> np.ndarray:
    """[L, N, 3, n]: each seed's per-sentence top-1 error, top-k error and cross-entropy."""
    return np.stack([torch.stack([s.errors, s.errors_k, s.ce_bits], 1).numpy() for _, s in fits], axis=1)


def seed_log(fitted: Any, i: int, seed: int) -> dict:
    return {
        "seed": seed,
        "best_epoch": fitted.best_epoch[i],
        "validation_ce_bits": float(fitted.validation_ce_nats[i] / np.log(2)),
    }
