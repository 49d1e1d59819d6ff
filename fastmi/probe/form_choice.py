"""``probe="auto"``: the embedding and the unembedding probe both fitted, the better kept per layer.

The two forms learn different things from few sentences.  The embedding probe (M x d numbers per
layer, started from the model's rows, :mod:`fastmi.probe.embedding_start`) can fit each symbol's row
when the data allow; the unembedding probe (d x d numbers, U held fixed) cannot, but needs far fewer
sentences to learn what it can.  Measured on MiniLM at 10,000 sentences (docs/performance.md),
neither wins at every layer and every n_train, so each layer keeps the one with the lower
cross-entropy on the *validation* sentences, after each form's "other" symbol is calibrated there.
The held-out sentences score only the chosen probe, so the bound stays valid (docs/theory.md §3).

The choice is made per layer on the first full fit; the other probe seeds train the chosen form only
(:func:`fit_forms` with ``forms``), which keeps their cost at one form's.  Each of the curve's smaller
fits chooses again, at its own size (fewer sentences can favour the other form).  Every fit receives
the raw features: the embedding probe is standardised here, with the statistics of the rows it trains
on, and the unembedding probe standardises itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from fastmi.data.bags import BagTargets
from fastmi.probe.checks import AUTO_FORMS as FORMS
from fastmi.probe.head_forms import feature_stats
from fastmi.probe.training import mean_ce

__all__ = ["FORMS", "fit_forms", "standardising"]


def standardising(fit: Callable) -> Callable:
    """``fit`` of standardised features (the embedding probe), taking and scoring raw ones: the
    statistics are those of the rows it trains on, and ``features`` applies them."""

    @functools.wraps(fit)
    def fit_raw(z_train, targets_train, z_val, targets_val, alphabet_size, config, **kwargs):
        mean, std = feature_stats(z_train)
        fitted = fit(
            (z_train - mean) / std,
            targets_train,
            (z_val - mean) / std,
            targets_val,
            alphabet_size,
            config,
            feature_std=std,
            **kwargs,
        )
        trained_features = fitted.features
        fitted.features = lambda z: trained_features((z - mean) / std)
        return fitted

    return fit_raw


def fit_forms(
    fits: dict[str, Callable],
    z_train: torch.Tensor,
    targets_train: BagTargets,
    z_val: torch.Tensor,
    targets_val: BagTargets,
    alphabet_size: int,
    config,
    forms: Sequence[str] | None = None,
    **kwargs,
):
    """One probe per layer of the raw features ``z_train`` [L, N, d], each of the form in ``forms``
    (one per layer), or, with ``forms=None``, of the form whose fit has the lower validation
    cross-entropy.  ``fits``: each form's fitting function (taking raw features, "other" calibrated);
    ``kwargs`` go to every fit.  The result's ``form`` says each layer's form, ``form_ce_nats`` each
    candidate's validation cross-entropy where both were fitted."""
    num_layers = z_train.shape[0]
    if forms is None:
        fitted, ce = {}, {}
        for form in FORMS:
            fitted[form] = f = fits[form](z_train, targets_train, z_val, targets_val, alphabet_size, config, **kwargs)
            ce[form] = mean_ce(f.features(z_val), f.weight, f.bias, targets_val, max(config.batch_size, 1))
        chosen = [FORMS[int(ce[FORMS[1]][i] < ce[FORMS[0]][i])] for i in range(num_layers)]  # ties: embedding
        parts = {form: (list(range(num_layers)), f) for form, f in fitted.items()}
        merged = _merge(parts, chosen)
        merged.form_ce_nats = [{form: float(ce[form][i]) for form in FORMS} for i in range(num_layers)]
        return merged
    if len(forms) != num_layers or any(form not in fits for form in forms):
        raise ValueError(f"forms must give one of {sorted(fits)} per layer ({num_layers}), got {list(forms)}")
    parts = {}
    for form in dict.fromkeys(forms):
        layers = [i for i, f in enumerate(forms) if f == form]
        index = torch.as_tensor(layers, device=z_train.device)
        train, val = z_train.index_select(0, index), z_val.index_select(0, index)
        parts[form] = (layers, fits[form](train, targets_train, val, targets_val, alphabet_size, config, **kwargs))
    return _merge(parts, list(forms))


def _merge(parts: dict, chosen: list[str]):
    """One TrainedHeads from per-form fits ``{form: (layers it was fitted on, TrainedHeads)}``, each
    layer taken from the form ``chosen`` for it."""
    from fastmi.probe.heads import TrainedHeads  # heads builds on this module's callers

    num_layers = len(chosen)
    where = {form: {layer: j for j, layer in enumerate(layers)} for form, (layers, _) in parts.items()}

    def take(form: str, layer: int):
        return parts[form][1], where[form][layer]

    # A fit of every layer with weights of its own (not U expanded) is written into in place: no
    # third [L, M, d] tensor beside the two forms' fits.
    whole = [f for layers, f in parts.values() if len(layers) == num_layers and f.weight.stride(0) != 0]
    if whole:
        weight, bias = whole[0].weight, whole[0].bias
    else:
        first = parts[chosen[0]][1]
        weight = first.weight.new_empty(num_layers, *first.weight.shape[1:])
        bias = first.bias.new_empty(num_layers, *first.bias.shape[1:])
    fields = {name: [] for name in ("best_epoch", "validation_ce_nats", "start", "converged", "other_bias")}
    for layer, form in enumerate(chosen):
        fitted, j = take(form, layer)
        weight[layer], bias[layer] = fitted.weight[j], fitted.bias[j]
        for name, values in fields.items():
            source = getattr(fitted, name)
            if source:
                values.append(source[j])

    def features(z: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(z)
        for form, (layers, fitted) in parts.items():
            mine = [layer for layer in layers if chosen[layer] == form]
            if not mine:
                continue
            index = torch.as_tensor(layers, device=z.device)
            mapped = fitted.features(z.index_select(0, index))
            keep = torch.as_tensor([where[form][layer] for layer in mine], device=z.device)
            out[torch.as_tensor(mine, device=z.device)] = mapped.index_select(0, keep)
        return out

    return TrainedHeads(
        weight,
        bias,
        features,
        fields["best_epoch"],
        fields["validation_ce_nats"],
        max(f.epochs_run for _, f in parts.values()),
        fields["start"],
        fields["converged"],
        fields["other_bias"],
        form=list(chosen),
    )
