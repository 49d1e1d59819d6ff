"""The forms a probe takes while it trains, and where the unembedding probe starts
(:mod:`fastmi.probe.heads` trains them; its docstring says what each form computes).

A head holds ``dense`` parameters (A', c' of the unembedding probe: full gradients every step) and
``rowwise`` ones ([L, M, ...]: W, b, updated on the sampled rows only under sampled softmax), and
gives the logits' weight and bias over any rows of the alphabet from views of the rowwise ones.
"""

from __future__ import annotations

import torch

from fastmi import kernels
from fastmi.data.bags import BagTargets

__all__ = ["Head", "LinearHead", "UnembeddingHead", "feature_stats", "validation_ce", "unembedding_start"]


def feature_stats(z: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each [L, 1, d], exactly as :func:`fastmi.probe.training.standardize` computes them."""
    train = z if rows is None else z[:, rows]
    mean = train.mean(dim=1, keepdim=True)
    std = train.std(dim=1, keepdim=True)
    floor = 1e-6 * std.amax(dim=-1, keepdim=True).clamp(min=1e-30)
    std = torch.where(std > floor, std, torch.ones_like(std))
    return mean, std


class Head:
    """What the loop trains: ``dense`` parameters (A', c': full gradients every step) and ``rowwise``
    ones ([L, M, ...]: W, b, updated on the sampled rows only under sampled softmax)."""

    dense: list[torch.Tensor]
    rowwise: list[torch.Tensor]

    def features(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output(self, rows: torch.Tensor | None, rowwise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [L, S, d], bias [L, S]) over vocabulary ``rows`` (None: all), from ``rowwise`` views."""
        raise NotImplementedError


class LinearHead(Head):
    """logits = W z + b; ``offset`` [M] (or None), fixed, is added to b in every loss: log of the
    number of ids a row stands for (:class:`fastmi.probe.tied_unseen.TiedUnseen`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        self.dense, self.rowwise, self.offset = [], [weight, bias], offset

    def features(self, z):
        return z

    def output(self, rows, rowwise):
        if self.offset is None:
            return rowwise[0], rowwise[1]
        return rowwise[0], rowwise[1] + (self.offset if rows is None else self.offset.index_select(0, rows))


class UnembeddingHead(Head):
    """h = A' z_std + c', logits = U h + b; z_std standardised with the training rows' (mean, std)."""

    def __init__(
        self,
        unembedding: torch.Tensor,
        a: torch.Tensor,
        c: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> None:
        self.unembedding, self.mean, self.std = unembedding, mean, std
        self.dense, self.rowwise = [a, c], [bias]

    def features(self, z):
        a, c = self.dense
        return torch.baddbmm(c.unsqueeze(1), (z - self.mean) / self.std, a.transpose(1, 2))

    def output(self, rows, rowwise):
        u = self.unembedding if rows is None else self.unembedding.index_select(0, rows)
        return u.expand(rowwise[0].shape[0], -1, -1), rowwise[0]


@torch.no_grad()
def validation_ce(head: Head, z: torch.Tensor, targets: BagTargets, chunk: int) -> torch.Tensor:
    """Mean per-row cross-entropy (nats) of each layer over the full vocabulary: [L]."""
    weight, bias = head.output(None, head.rowwise)
    total = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    for begin in range(0, z.shape[1], chunk):
        rows = torch.arange(begin, min(begin + chunk, z.shape[1]), device=z.device)
        total += kernels.bag_cross_entropy(
            head.features(z[:, rows]), weight, bias, targets.select(rows), reduction="sum"
        ).double()
    return total / max(int((targets.lengths > 0).sum()), 1)


def unembedding_start(z_train, z_val, targets_val, unembedding, log_prior, chunk) -> tuple[Head, list[str]]:
    """The head at epoch 0: per layer, the better (on validation) of the prior start and the model's map."""
    if unembedding is None:
        raise ValueError("probe='unembedding' needs the model's output embedding U (unembedding=(U, bias))")
    u, model_bias = unembedding
    num_layers, _, dim = z_train.shape
    if u.dim() != 2 or u.shape != (log_prior.shape[1], dim):
        raise ValueError(
            f"the output embedding has shape {tuple(u.shape)}, expected [M, d] = "
            f"{[log_prior.shape[1], dim]} (one row per alphabet id, the features' width)"
        )
    device = z_train.device
    u = u.to(device=device, dtype=torch.float32)
    mean, std = feature_stats(z_train)
    # The model's map U z + b_model in standardised coordinates: A' = diag(std), c' = mean.
    model_a = torch.diag_embed(std.squeeze(1))
    model_c = mean.squeeze(1).clone()
    model_b = (
        (
            torch.zeros(log_prior.shape[1], device=device)
            if model_bias is None
            else model_bias.to(device=device, dtype=torch.float32)
        )
        .expand_as(log_prior)
        .clone()
    )
    prior_head = UnembeddingHead(u, torch.zeros_like(model_a), torch.zeros_like(model_c), log_prior.clone(), mean, std)
    model_head = UnembeddingHead(u, model_a, model_c, model_b, mean, std)
    use_model = validation_ce(model_head, z_val, targets_val, chunk) < validation_ce(
        prior_head, z_val, targets_val, chunk
    )
    pick = use_model.view(-1, *([1] * 2))
    a = torch.where(pick, model_a, prior_head.dense[0])
    c = torch.where(use_model.view(-1, 1), model_c, prior_head.dense[1])
    b = torch.where(use_model.view(-1, 1), model_b, prior_head.rowwise[0])
    start = ["model map" if bool(flag) else "prior" for flag in use_model.cpu()]
    return UnembeddingHead(u, a.contiguous(), c.contiguous(), b.contiguous(), mean, std), start
