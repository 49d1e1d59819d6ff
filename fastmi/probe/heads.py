"""The probe settings beyond the default: a probe through the model's own unembedding, and
sampled-softmax training (:mod:`fastmi.probe.sampled_softmax`), alone or together.

Two forms of q(t | z) = softmax(logits), both affine in z:

* ``"linear"``: logits = W z + b, W [M, d] and b trained per layer (the default, :mod:`fastmi.probe.training`).
* ``"unembedding"``: logits = U (A z + c) + b, U [M, d] the model's frozen output embedding (rows of
  the alphabet's ids), A [d, d], c [d] and b [M] trained per layer: the tuned-lens idea applied to
  bags.  No V x d parameters or Adam state per layer, and 4 B d V work per step instead of 6, since
  U gets no gradient.

Features: the linear probe sees standardised features (:func:`fastmi.probe.training.standardize`).  The
unembedding probe receives the raw features and standardises them itself, folding the
standardisation into A and c: with z_std = (z - mu) / sigma, ``A z + c = A' z_std + c'`` for
``A' = A diag(sigma)`` and ``c' = A mu + c``.  It trains A', c' (one step size suits every layer, as for
the linear probe) and the start A = I, c = 0 is exactly the model's own map U z + b_model.

Start (epoch 0), per layer, whichever has the lower validation cross-entropy: the prior-only probe
(A = 0, c = 0, b = log of the smoothed training marginal, as the linear probe starts) or the model's
own map (A = I, c = 0, b = the model's output bias, or 0).  At the last layer of a decoder the
latter is the model's own next-token map applied to the pooled state.

Training is the loop of :func:`fastmi.probe.training.fit_probes` (Adam on minibatches, early stopping on
the exact full-vocabulary validation cross-entropy, each layer keeps its best epoch), with the
vocabulary-sized parameters updated row-sparsely under sampled softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from fastmi import kernels
from fastmi.data.bags import BagTargets
from fastmi.probe.sampled_softmax import (
    Candidates,
    NegativeSampler,
    RowSparseAdam,
    parse_train_softmax,
    proposal_probabilities,
)
from fastmi.probe.training import EarlyStopping, TrainConfig, fit_probes, token_marginal

__all__ = ["PROBE_FORMS", "TrainedHeads", "fit_heads", "feature_stats", "check_probe_form", "batch_loss"]

PROBE_FORMS = ("linear", "unembedding")


def check_probe_form(probe: str) -> str:
    if probe not in PROBE_FORMS:
        raise ValueError(f"probe must be one of {PROBE_FORMS}, got {probe!r}")
    return probe


@dataclass
class TrainedHeads:
    """Per layer, the fitted probe as ``softmax(weight @ features(z) + bias)``: what scoring needs."""

    weight: torch.Tensor  # [L, M, d] (for the unembedding form, U expanded over the layers: a view)
    bias: torch.Tensor  # [L, M]
    features: Callable[[torch.Tensor], torch.Tensor]  # z [L, N, d] as the probe received it -> [L, N, d]
    best_epoch: list[int] = field(default_factory=list)
    validation_ce_nats: list[float] = field(default_factory=list)
    epochs_run: int = 0
    start: list[str] = field(default_factory=list)  # per layer, "prior" or "model map" (unembedding)
    converged: list[bool] = field(default_factory=list)  # stopped by patience, not by max_epochs


def feature_stats(z: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each [L, 1, d], exactly as :func:`fastmi.probe.training.standardize` computes them."""
    train = z if rows is None else z[:, rows]
    mean = train.mean(dim=1, keepdim=True)
    std = train.std(dim=1, keepdim=True)
    floor = 1e-6 * std.amax(dim=-1, keepdim=True).clamp(min=1e-30)
    std = torch.where(std > floor, std, torch.ones_like(std))
    return mean, std


class _Head:
    """What the loop trains: ``dense`` parameters (A', c': full gradients every step) and ``rowwise``
    ones ([L, M, ...]: W, b, updated on the sampled rows only under sampled softmax)."""

    dense: list[torch.Tensor]
    rowwise: list[torch.Tensor]

    def features(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output(self, rows: torch.Tensor | None, rowwise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [L, S, d], bias [L, S]) over vocabulary ``rows`` (None: all), from ``rowwise`` views."""
        raise NotImplementedError


class _LinearHead(_Head):
    """logits = W z + b; ``offset`` [M] (or None), fixed, is added to b in every loss: log of the
    number of ids a row stands for (:class:`_TiedUnseen`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, offset: torch.Tensor | None = None) -> None:
        self.dense, self.rowwise, self.offset = [], [weight, bias], offset

    def features(self, z):
        return z

    def output(self, rows, rowwise):
        if self.offset is None:
            return rowwise[0], rowwise[1]
        return rowwise[0], rowwise[1] + (self.offset if rows is None else self.offset.index_select(0, rows))


@dataclass
class _TiedUnseen:
    """The ids that no training bag holds, trained as one tied row of the linear probe.

    Under the full softmax these ids are interchangeable: they start equal (W row 0, b = the smoothed
    prior's floor), and every step gives each of them the same gradient (-p_v(z) (z, 1) per row,
    with the same p_v), so Adam keeps them equal to the end.  Training over the "seen" ids plus one
    row that stands for all ``size`` unseen ones, with log(size) added to its logit in the softmax, is
    therefore the same problem, and its gradient divided by ``size`` is the one each unseen row gets.
    Nothing is approximated: held-out scoring expands the tied row back to every unseen id.

    Under sampled softmax the tied row is always in the sub-vocabulary (exactly, not sampled), so the
    unseen ids' probability mass is trained as under the full softmax, and the negatives are drawn
    among the seen ids only.  On a small corpus that is most of the alphabet (demo, MiniLM with
    vocab="full": 3,927 of 30,517 ids occur in the 720 training bags, and 11% of the held-out tokens
    are unseen ones); sampling them one by one left their mass near its starting value.
    """

    seen: torch.Tensor  # [S] sorted alphabet ids that occur in a training bag; row i of the tied probe
    size: int  # number of unseen ids, all on row S
    rows: torch.Tensor  # [M] row of the tied probe of each alphabet id

    @classmethod
    def build(cls, marginal: torch.Tensor) -> _TiedUnseen | None:
        """From the training marginal [M]; None when fewer than two ids are unseen (nothing to tie)."""
        seen_mask = marginal > 0
        size = int((~seen_mask).sum())
        if size < 2:
            return None
        seen = torch.nonzero(seen_mask).flatten()
        rows = torch.full_like(marginal, seen.numel(), dtype=torch.long)
        rows[seen] = torch.arange(seen.numel(), device=marginal.device)
        return cls(seen=seen, size=size, rows=rows)

    @property
    def width(self) -> int:
        return self.seen.numel() + 1

    def collapse(self, values: torch.Tensor) -> torch.Tensor:
        """Per-id values [..., M] -> per-row [..., S + 1] (the tied row takes the first unseen id's)."""
        first_unseen = torch.nonzero(self.rows == self.seen.numel())[0]
        return values.index_select(-1, torch.cat([self.seen, first_unseen]))

    def offset(self) -> torch.Tensor:
        offset = torch.zeros(self.width, device=self.rows.device)
        offset[-1] = math.log(self.size)
        return offset

    def targets(self, bags: BagTargets) -> tuple[BagTargets, float]:
        """Bags over the tied rows, and the mean per-row CE (nats) that the offset takes off them.

        A bag's unseen tokens all land on the tied row, whose logit carries log(size) in the loss
        while each unseen id's own logit does not: the exact CE is the tied CE plus
        (tokens on the tied row / n_S) log(size) per row, a constant of the bags.
        """
        tied = bags.remap(self.rows)
        on_tied = torch.where(tied.ids == self.seen.numel(), tied.counts, torch.zeros_like(tied.counts)).double()
        per_row = torch.zeros(tied.num_rows, dtype=torch.float64, device=on_tied.device)
        per_row.index_add_(0, tied.row_index, on_tied)
        lengths = tied.lengths
        share = per_row / lengths.clamp(min=1).double()
        return tied, float(share.sum()) * math.log(self.size) / max(int((lengths > 0).sum()), 1)


class _UnembeddingHead(_Head):
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


def fit_heads(
    z_train: torch.Tensor,
    targets_train: BagTargets,
    z_val: torch.Tensor,
    targets_val: BagTargets,
    alphabet_size: int,
    config: TrainConfig,
    probe: str = "linear",
    train_softmax: str = "full",
    unembedding: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    seed: int = 0,
    progress: bool = True,
    description: str = "probe",
    tie_unseen: bool | None = None,
) -> TrainedHeads:
    """Fit one probe per layer of ``z_train`` [L, N, d] in the given setting; early-stop on ``z_val``.

    ``probe="linear"`` expects standardised features; ``"unembedding"`` the raw ones, and
    ``unembedding=(U [M, d], b_model [M] or None)`` restricted to the alphabet's ids.  The default
    setting (linear, full) is :func:`fastmi.probe.training.fit_probes` itself.

    ``tie_unseen``: train the linear probe's ids that no training bag holds as one tied row
    (:class:`_TiedUnseen`; exact under the full softmax).  Default: ``config.tie_unseen``, and when
    that is None, with sampled softmax only, so the full-softmax default stays
    :func:`fastmi.probe.training.fit_probes`.
    """
    check_probe_form(probe)
    num_samples, proposal = parse_train_softmax(train_softmax)
    if tie_unseen is None:
        tie_unseen = config.tie_unseen
    if tie_unseen is None:
        tie_unseen = probe == "linear" and num_samples is not None
    if tie_unseen and probe != "linear":
        raise ValueError("tie_unseen applies to the linear probe only (the unembedding probe's unseen ids differ by U)")
    if probe == "linear" and num_samples is None and not tie_unseen:
        fitted = fit_probes(
            z_train,
            targets_train,
            z_val,
            targets_val,
            alphabet_size,
            config,
            seed=seed,
            progress=progress,
            description=description,
        )
        return TrainedHeads(
            fitted.weight,
            fitted.bias,
            lambda z: z,
            fitted.best_epoch,
            fitted.validation_ce_nats,
            fitted.epochs_run,
            ["prior"] * len(fitted.best_epoch),
            fitted.converged,
        )
    num_layers, num_rows, dim = z_train.shape
    device = z_train.device
    marginal = token_marginal(targets_train, alphabet_size)
    prior = (1 - config.prior_smoothing) * marginal + config.prior_smoothing / alphabet_size
    log_prior = prior.log().float().expand(num_layers, -1).clone()
    chunk = max(config.batch_size, 1)
    tied = _TiedUnseen.build(marginal) if tie_unseen else None
    validation_shift = 0.0
    if tied is not None:
        marginal, log_prior = tied.collapse(marginal), tied.collapse(log_prior).contiguous()
        marginal[-1] = 0.0  # the tied row is always in the sub-vocabulary, never drawn
        targets_train, _ = tied.targets(targets_train)
        targets_val, validation_shift = tied.targets(targets_val)
    if probe == "linear":
        width = alphabet_size if tied is None else tied.width
        head: _Head = _LinearHead(
            torch.zeros(num_layers, width, dim, device=device), log_prior, None if tied is None else tied.offset()
        )
        start = ["prior"] * num_layers
    else:
        head, start = _unembedding_start(z_train, z_val, targets_val, unembedding, log_prior, chunk)
    params = head.dense + head.rowwise
    # W carries the weight decay (as in fit_probes); A', c' and b do not.
    decay = (
        [0.0] * len(head.dense) + [config.weight_decay if probe == "linear" else 0.0] + [0.0] * (len(head.rowwise) - 1)
    )
    # A' and c' move every logit through U: their steps are divided by the typical row norm of U, so
    # a step moves logits as much as a linear probe's step does, whatever the model's embedding scale.
    dense_scale = 1.0 if probe == "linear" else 1.0 / float(head.unembedding.norm(dim=1).median().clamp(min=1e-6))
    lr_scale = [dense_scale] * len(head.dense) + [1.0] * len(head.rowwise)
    if config.sampled_adam not in ("dense", "lazy"):
        raise ValueError(f"sampled_adam must be 'dense' or 'lazy', got {config.sampled_adam!r}")
    optimizer = RowSparseAdam(
        params,
        lr=config.lr / math.sqrt(max(dim, 1)),
        weight_decay=decay,
        lr_scale=lr_scale,
        lazy=config.sampled_adam == "lazy",
    )
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if num_samples is not None:
        q = proposal_probabilities(proposal, marginal, config.prior_smoothing)
        if tied is not None:
            q[-1] = 0.0
            q = q / q.sum()
        sampler = NegativeSampler(
            q,
            num_samples,
            torch.Generator().manual_seed(seed + 1),
            always=None if tied is None else torch.tensor([tied.width - 1], device=device),
        )
    # Each unseen id's share of the tied row's gradient (see _TiedUnseen); the row is last in any S.
    tied_scale = None if tied is None else 1.0 / tied.size

    def validation_ce() -> torch.Tensor:
        return _validation_ce(head, z_val, targets_val, chunk) + validation_shift

    stopping = EarlyStopping(params, validation_ce(), config)
    epochs = tqdm(range(1, config.max_epochs + 1), desc=description, leave=False, disable=not progress)
    epoch = 0
    for epoch in epochs:
        order = torch.randperm(num_rows, generator=generator).to(device)
        for begin in range(0, num_rows, chunk):
            rows = order[begin : begin + chunk]
            _step(head, optimizer, sampler, z_train[:, rows], targets_train.select(rows), tied_scale)
        done = stopping.update(epoch, params, validation_ce())
        epochs.set_postfix(val_ce=f"{float(stopping.best_ce.mean()):.3f}", stale=int(stopping.stale.min()))
        if done:
            break
    epochs.close()
    for p, saved in zip(params, stopping.best):
        p.data.copy_(saved)
    if tied is not None:
        weight, bias = (p.index_select(1, tied.rows) for p in head.rowwise)
    else:
        weight, bias = head.output(None, head.rowwise)
    return TrainedHeads(
        weight=weight.detach(),
        bias=bias.detach(),
        features=_frozen_features(head),
        best_epoch=stopping.best_epoch.tolist(),
        validation_ce_nats=stopping.best_ce.tolist(),
        epochs_run=epoch,
        start=start,
        converged=stopping.converged,
    )


def batch_loss(
    head: _Head, z: torch.Tensor, targets: BagTargets, candidates: Candidates | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-layer mean bag cross-entropy [L] of one batch, over the full alphabet or over ``candidates``
    (log-Q corrected), and the leaf tensors standing for the vocabulary-sized parameters in it."""
    if candidates is None:
        rows, bags, correction = None, targets, None
        views = [p.detach().requires_grad_(True) for p in head.rowwise]
    else:
        rows, bags, correction = candidates.ids, candidates.targets, candidates.correction
        # Leaf copies of the sampled rows: their gradients are [L, S, ...], never [L, M, ...].
        views = [p.index_select(1, rows).requires_grad_(True) for p in head.rowwise]
    weight, bias = head.output(rows, views)
    if correction is not None:
        bias = bias + correction
    return kernels.bag_cross_entropy(head.features(z), weight, bias, bags, reduction="mean", validate=False), views


def _step(
    head: _Head,
    optimizer: RowSparseAdam,
    sampler: NegativeSampler | None,
    z: torch.Tensor,
    targets: BagTargets,
    last_row_scale: float | None = None,
) -> None:
    for p in head.dense:
        p.requires_grad_(True)
        p.grad = None
    candidates = None if sampler is None else sampler.draw(targets)
    losses, views = batch_loss(head, z, targets, candidates)
    losses.sum().backward()
    if last_row_scale is not None:
        for v in views:
            v.grad[:, -1] *= last_row_scale
    rows = None if candidates is None else candidates.ids
    # The sampled rows' values are already gathered in ``views``: the optimiser updates those copies.
    rowwise = [(v.grad, None) if rows is None else (v.grad, rows, v.detach()) for v in views]
    optimizer.step([(p.grad, None) for p in head.dense] + rowwise)
    for p in head.dense:
        p.requires_grad_(False)
        p.grad = None


@torch.no_grad()
def _validation_ce(head: _Head, z: torch.Tensor, targets: BagTargets, chunk: int) -> torch.Tensor:
    """Mean per-row cross-entropy (nats) of each layer over the full vocabulary: [L]."""
    weight, bias = head.output(None, head.rowwise)
    total = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    for begin in range(0, z.shape[1], chunk):
        rows = torch.arange(begin, min(begin + chunk, z.shape[1]), device=z.device)
        total += kernels.bag_cross_entropy(
            head.features(z[:, rows]), weight, bias, targets.select(rows), reduction="sum"
        ).double()
    return total / max(int((targets.lengths > 0).sum()), 1)


def _frozen_features(head: _Head) -> Callable[[torch.Tensor], torch.Tensor]:
    def features(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head.features(z)

    return features


def _unembedding_start(z_train, z_val, targets_val, unembedding, log_prior, chunk) -> tuple[_Head, list[str]]:
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
    prior_head = _UnembeddingHead(u, torch.zeros_like(model_a), torch.zeros_like(model_c), log_prior.clone(), mean, std)
    model_head = _UnembeddingHead(u, model_a, model_c, model_b, mean, std)
    use_model = _validation_ce(model_head, z_val, targets_val, chunk) < _validation_ce(
        prior_head, z_val, targets_val, chunk
    )
    pick = use_model.view(-1, *([1] * 2))
    a = torch.where(pick, model_a, prior_head.dense[0])
    c = torch.where(use_model.view(-1, 1), model_c, prior_head.dense[1])
    b = torch.where(use_model.view(-1, 1), model_b, prior_head.rowwise[0])
    start = ["model map" if bool(flag) else "prior" for flag in use_model.cpu()]
    return _UnembeddingHead(u, a.contiguous(), c.contiguous(), b.contiguous(), mean, std), start
