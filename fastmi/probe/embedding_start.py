"""The ``"embedding"`` probe: the linear probe started from the model's own embedding of each symbol.

A linear probe started at W = 0 has to learn an M x d matrix from the training sentences alone, and
with a few thousand sentences and tens of thousands of symbols most rows see one or two bags: the
bound is then set by the amount of text, not by the layer.  The model already holds a row per token
that says which directions of its residual stream stand for that token: its output embedding U
(tied to the input embedding E in most small models).  Started from them, the probe only has to
learn how this layer departs from the embedding; early stopping on validation keeps it near the start
when the data cannot say more (early stopping is a prior centred on the start).

The start, per layer, in the standardised coordinates the linear probe trains in
(z_std = (z - mu) / sigma):

    W0 = alpha * U diag(sigma) / s,

U diag(sigma) being the model's own map U z up to a per-symbol constant (which the bias absorbs),
s the spread of its logits over the symbols on training rows (so alpha is in nats), and alpha
chosen per layer from :data:`SCALES` by the validation cross-entropy with the bias at the log of
the training marginal; alpha = 0 is the linear probe's own start, so the chosen start is never worse
on validation than the zero start.  Symbols without a row in U ("other") start from the mean row.
Where the cache also stores an untied model's input embedding E, E diag(sigma) is a second
candidate, chosen or not by the same validation cross-entropy.

The bound stays valid for any start, scale or choice made without the held-out sentences
(docs/theory.md §3 and §7): they only change which decoder is scored.
"""

from __future__ import annotations

import torch

from fastmi.data.bags import BagTargets

__all__ = ["SCALES", "embedding_rows", "embedding_start"]

# alpha, in nats of logit spread; 0 is the zero start.  A geometric grid: the right scale differs by
# an order of magnitude between the embedding layer (token identity is the whole signal) and deep
# layers of a decoder (where U z predicts the next token, not the present ones).
SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
_SPREAD_ROWS = 256  # training rows that measure the logit spread s


def embedding_rows(unembedding: torch.Tensor, other: bool) -> torch.Tensor:
    """U's rows for the alphabet [M, d]; with ``other``, one more row: the mean of the rest."""
    rows = unembedding.float()
    if other:
        rows = torch.cat([rows, rows.mean(dim=0, keepdim=True)])
    return rows


@torch.no_grad()
def embedding_start(
    candidates: list[tuple[str, torch.Tensor]],
    feature_std: torch.Tensor,
    z_train: torch.Tensor,
    z_val: torch.Tensor,
    targets_val: BagTargets,
    log_prior: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, list[str]]:
    """W0 [L, M, d] and, per layer, its start's name ("prior" for the zero start, else the rows' name
    and alpha), for standardised features ``z_train``/``z_val`` [L, N, d].

    ``candidates``: ``[(name, rows [M, d]), ...]`` (:func:`embedding_rows` of U, and of E where it is
    not U); the validation cross-entropy chooses among all of them and every alpha.  ``feature_std``:
    the raw features' training std [L, 1, d]; ``log_prior``: the bias at epoch 0 [L, M].
    """
    from fastmi.probe.training import mean_ce  # training imports this module's users

    num_layers = z_train.shape[0]
    start = torch.zeros(num_layers, log_prior.shape[1], z_train.shape[2], device=z_train.device)
    best_ce = mean_ce(z_val, start, log_prior, targets_val, chunk)  # alpha = 0: the linear probe's start
    names = ["prior"] * num_layers
    for name, rows in candidates:
        weight = _unit_spread(rows, feature_std, z_train, log_prior.shape[1])
        for scale in SCALES[1:]:
            ce = mean_ce(z_val, weight * scale, log_prior, targets_val, chunk)
            better = ce < best_ce
            best_ce = torch.where(better, ce, best_ce)
            start = torch.where(better.view(-1, 1, 1), weight * scale, start)
            names = [f"{name} x{scale:g}" if b else n for b, n in zip(better.tolist(), names)]
    return start, names


def _unit_spread(rows: torch.Tensor, feature_std: torch.Tensor, z_train: torch.Tensor, size: int) -> torch.Tensor:
    """rows diag(sigma) per layer [L, M, d], divided by its logits' spread over the symbols on training rows."""
    num_layers, num_rows, dim = z_train.shape
    if rows.shape != (size, dim):
        raise ValueError(
            f"the embedding probe's rows have shape {tuple(rows.shape)}, expected [M, d] = "
            f"{[size, dim]} (one row per alphabet symbol, the features' width)"
        )
    weight = rows.to(z_train.device).unsqueeze(0) * feature_std.to(z_train.device)  # U diag(sigma)
    sample = z_train[:, : min(num_rows, _SPREAD_ROWS)]
    for layer in range(num_layers):  # one layer at a time: [rows, M] logits, never [L, rows, M]
        spread = (sample[layer] @ weight[layer].T).std(dim=1).mean()
        weight[layer] /= spread.clamp(min=1e-12)
    return weight
