"""The features of one layer group and the function that fits probes to them, as a run's form wants.

:func:`fastmi.probe.recoverability.probe_group` fits the result's probes with them, and
:mod:`fastmi.probe.alphabet_choice` its trial probes, so a trial is trained exactly as the result is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from fastmi.probe.form_choice import FORMS, fit_forms, standardising
from fastmi.probe.heads import feature_stats, fit_heads
from fastmi.probe.other_bias import with_calibrated_other
from fastmi.probe.source import load_layer

__all__ = ["group_features"]


def group_features(run: Any, group: Sequence[int]) -> tuple[torch.Tensor, Any]:
    """The features [L, N, d] of ``group``'s layers on the run's device (standardised with the training
    rows' statistics where the probe form wants that) and the function that fits probes to them."""
    src = run.source
    z = torch.stack([load_layer(src, layer, src.targets.num_rows) for layer in group]).to(run.device)
    if z.shape[-1] != run.width:
        raise ValueError(f"layers {group} have width {z.shape[-1]}, layer {src.layers[0]} has {run.width}")
    if run.probe in ("linear", "embedding"):  # the others take raw features (form_choice, heads)
        mean, std = feature_stats(z, run.index["train"])
        z = (z - mean) / std
        fit = _fit_function(run, run.probe, run.head, feature_std=std if run.probe == "embedding" else None)
    elif run.probe == "auto":
        fits = {form: _fit_function(run, form, run.head[0][form]) for form in FORMS}
        fit = functools.partial(fit_forms, {**fits, "embedding": standardising(fits["embedding"])})
    else:
        fit = _fit_function(run, run.probe, run.head)
    return z, fit


def _fit_function(run: Any, probe: str, head: Any, feature_std: torch.Tensor | None = None):
    """:func:`fit_heads` of one form with the run's settings bound; for the observed alphabet, followed
    by the calibration of "other" on validation (it never occurs in training)."""
    fit = functools.partial(
        fit_heads,
        probe=probe,
        train_softmax=run.config.train_softmax,
        unembedding=head,
        **({"feature_std": feature_std} if feature_std is not None else {}),
    )
    if run.alphabet.setting == "observed" and run.alphabet.other:
        fit = with_calibrated_other(fit)
    return fit
