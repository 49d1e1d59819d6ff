"""Every probe form and training softmax: the linear probe from a zero start or from the model's own
embedding rows, a probe through the model's own unembedding, and sampled-softmax training
(:mod:`fastmi.probe.sampled_softmax`).

Three forms of q(t | z) = softmax(logits), all affine in z:

* ``"linear"``: logits = W z + b, W [M, d] and b trained per layer from W = 0 (:mod:`fastmi.probe.training`).
* ``"embedding"``: the same logits, W started from the model's embedding rows of the alphabet at a
  scale chosen per layer on validation and pulled toward them (:mod:`fastmi.probe.embedding_start`);
  ``"auto"``, the default, is this form wherever the rows are at hand (:mod:`fastmi.probe.head_rows`).
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

Training is the epoch loop every probe shares, :func:`fastmi.probe.training.train_epochs` (AdamW on
minibatches, early stopping on the exact full-vocabulary validation cross-entropy, each layer keeps
its best epoch), with the vocabulary-sized parameters updated row-sparsely under sampled softmax
(:class:`fastmi.probe.adamw.AdamW`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fastmi import kernels
from fastmi.data.bags import BagTargets
from fastmi.probe.adamw import AdamW
from fastmi.probe.checks import PROBE_FORMS, check_probe_form, parse_train_softmax
from fastmi.probe.config import TrainConfig
from fastmi.probe.embedding_start import embedding_start
from fastmi.probe.head_forms import Head, LinearHead, feature_stats, unembedding_start, validation_ce
from fastmi.probe.sampled_softmax import Candidates, NegativeSampler, proposal_probabilities
from fastmi.probe.tied_unseen import TiedUnseen
from fastmi.probe.training import (
    EarlyStopping,
    fit_probes,
    perturb_start,
    prior_logits,
    token_marginal,
    train_epochs,
)

__all__ = ["PROBE_FORMS", "TrainedHeads", "fit_heads", "feature_stats", "check_probe_form", "batch_loss"]


@dataclass
class TrainedHeads:
    """Per layer, the fitted probe as ``softmax(weight @ features(z) + bias)``: what scoring needs."""

    weight: torch.Tensor  # [L, M, d] (for the unembedding form, U expanded over the layers: a view)
    bias: torch.Tensor  # [L, M]
    features: Callable[[torch.Tensor], torch.Tensor]  # z [L, N, d] as the probe received it -> [L, N, d]
    best_epoch: list[int] = field(default_factory=list)
    validation_ce_nats: list[float] = field(default_factory=list)
    epochs_run: int = 0
    # per layer: "prior" (the zero start), "model map" (unembedding) or the embedding start's rows and scale
    start: list[str] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)  # stopped by patience, not by max_epochs
    other_bias: list[dict] = field(default_factory=list)  # per layer, the calibration of "other" (observed)
    form: list[str] = field(default_factory=list)  # per layer, the form trained, where "auto" chose it
    form_ce_nats: list[dict] = field(default_factory=list)  # per layer, each form's validation CE (auto)


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
    init_seed: int | None = None,
    feature_std: torch.Tensor | None = None,
) -> TrainedHeads:
    """Fit one probe per layer of ``z_train`` [L, N, d] in the given setting; early-stop on ``z_val``.

    ``probe="linear"`` expects standardised features; ``"unembedding"`` the raw ones, and
    ``unembedding=(U [M, d], b_model [M] or None)`` restricted to the alphabet's ids.  The default
    setting (linear, full) is :func:`fastmi.probe.training.fit_probes` itself; every setting runs its
    epoch loop (:func:`fastmi.probe.training.train_epochs`).

    ``tie_unseen``: train the linear probe's ids that no training bag holds as one tied row
    (:class:`fastmi.probe.tied_unseen.TiedUnseen`; exact under the full softmax).  Default:
    ``config.tie_unseen``, and when that is None, with sampled softmax only, so the full-softmax
    default stays :func:`fastmi.probe.training.fit_probes`.  ``init_seed``: the linear probe starts
    from a random W near 0 (:func:`fastmi.probe.training.perturb_start`; ``probe_seeds``).

    ``probe="embedding"``: the linear probe (standardised features) started from the model's
    embedding rows, ``unembedding=([(name, rows [M, d]), ...], None)`` (candidate starts,
    :mod:`fastmi.probe.embedding_start`), one of them and its scale chosen per layer on validation;
    ``feature_std`` [L, 1, d]: the raw features' training std.
    """
    if check_probe_form(probe) == "auto":
        raise ValueError("fit_heads trains one form; fastmi.recoverability resolves probe='auto' to one")
    num_samples, proposal = parse_train_softmax(train_softmax)
    tie_unseen = _resolve_tie_unseen(tie_unseen, config, probe, num_samples)
    if probe == "embedding" and (num_samples is not None or tie_unseen):
        raise ValueError("probe='embedding' trains with the full softmax only (train_softmax='full', no tie_unseen)")
    if probe in ("linear", "embedding") and num_samples is None and not tie_unseen:
        data = (z_train, targets_train, z_val, targets_val, alphabet_size, config)
        fit_args = dict(seed=seed, progress=progress, description=description, init_seed=init_seed)
        return _fit_linear(data, probe, unembedding, feature_std, **fit_args)
    setup = _setup(z_train, targets_train, z_val, targets_val, alphabet_size, config, probe, unembedding, tie_unseen)
    if probe == "linear":
        perturb_start(setup.head.rowwise[0], init_seed)
    head, chunk = setup.head, max(config.batch_size, 1)
    optimizer = _optimizer(head, probe, config, z_train.shape[2])
    sampler = None if num_samples is None else _sampler(setup, proposal, num_samples, config, seed)
    # Each unseen id's share of the tied row's gradient (see TiedUnseen); the row is last in any S.
    tied_scale = None if setup.tied is None else 1.0 / setup.tied.size

    def step(rows: torch.Tensor) -> None:
        _step(head, optimizer, sampler, z_train[:, rows], setup.targets_train.select(rows), tied_scale)

    def validation() -> torch.Tensor:
        return validation_ce(head, z_val, setup.targets_val, chunk) + setup.validation_shift

    params = head.dense + head.rowwise
    stopping, epochs_run = train_epochs(
        step, validation, params, z_train.shape[1], config, seed, progress, description, optimizer
    )
    return _trained(setup, stopping, epochs_run)


def _fit_linear(data: tuple, probe: str, rows, feature_std, **fit_args) -> TrainedHeads:
    """The linear and embedding probes (:func:`fastmi.probe.training.fit_probes`) on ``data`` (the
    training and validation features and bags, the alphabet's size, the TrainConfig) from their start:
    0, or the embedding rows at the scale validation chose."""
    z_train, targets_train, z_val, targets_val, alphabet_size, config = data
    chunk = max(config.batch_size, 1)
    log_prior = prior_logits(targets_train, alphabet_size, config, z_train.shape[0])
    start, labels = None, ["prior"] * z_train.shape[0]
    if probe == "embedding":
        if rows is None or feature_std is None:
            raise ValueError("probe='embedding' needs the model's embedding rows and the features' std")
        start, labels = embedding_start(rows[0], feature_std, z_train, z_val, targets_val, log_prior, chunk)
    fitted = fit_probes(*data, start=start, **fit_args)
    return TrainedHeads(
        fitted.weight,
        fitted.bias,
        lambda z: z,
        fitted.best_epoch,
        fitted.validation_ce_nats,
        fitted.epochs_run,
        labels,
        fitted.converged,
    )


def _resolve_tie_unseen(tie_unseen: bool | None, config: TrainConfig, probe: str, num_samples: int | None) -> bool:
    if tie_unseen is None:
        tie_unseen = config.tie_unseen
    if tie_unseen is None:
        tie_unseen = probe == "linear" and num_samples is not None
    if tie_unseen and probe not in ("linear", "embedding"):
        raise ValueError("tie_unseen applies to the linear probe only (the unembedding probe's unseen ids differ by U)")
    return tie_unseen


@dataclass
class _Setup:
    """One fit at epoch 0: the head, and the bags and training marginal over the head's rows."""

    head: Head
    start: list[str]  # per layer, "prior" or "model map"
    tied: TiedUnseen | None
    marginal: torch.Tensor  # training marginal over the head's rows (the tied row's is 0: never drawn)
    targets_train: BagTargets
    targets_val: BagTargets
    validation_shift: float  # nats that the tied row's offset takes off the validation CE


def _setup(z_train, targets_train, z_val, targets_val, alphabet_size, config, probe, unembedding, tie_unseen) -> _Setup:
    num_layers, _, dim = z_train.shape
    marginal = token_marginal(targets_train, alphabet_size)
    log_prior = prior_logits(targets_train, alphabet_size, config, num_layers).clone()
    tied = TiedUnseen.build(marginal) if tie_unseen else None
    validation_shift = 0.0
    if tied is not None:
        marginal, log_prior = tied.collapse(marginal), tied.collapse(log_prior).contiguous()
        marginal[-1] = 0.0  # the tied row is always in the sub-vocabulary, never drawn
        targets_train, _ = tied.targets(targets_train)
        targets_val, validation_shift = tied.targets(targets_val)
    if probe == "linear":
        width = alphabet_size if tied is None else tied.width
        weight = torch.zeros(num_layers, width, dim, device=z_train.device)
        head: Head = LinearHead(weight, log_prior, None if tied is None else tied.offset())
        start = ["prior"] * num_layers
    else:
        chunk = max(config.batch_size, 1)
        head, start = unembedding_start(z_train, z_val, targets_val, unembedding, log_prior, chunk)
    return _Setup(head, start, tied, marginal, targets_train, targets_val, validation_shift)


def _optimizer(head: Head, probe: str, config: TrainConfig, dim: int) -> AdamW:
    # W carries the weight decay (as in fit_probes); A', c' and b do not.
    decay = [0.0] * len(head.dense) + [config.weight_decay if probe == "linear" else 0.0]
    decay += [0.0] * (len(head.rowwise) - 1)
    # A' and c' move every logit through U: their steps are divided by the typical row norm of U, so
    # a step moves logits as much as a linear probe's step does, whatever the model's embedding scale.
    dense_scale = 1.0 if probe == "linear" else 1.0 / float(head.unembedding.norm(dim=1).median().clamp(min=1e-6))
    return AdamW(
        head.dense + head.rowwise,
        lr=config.lr / math.sqrt(max(dim, 1)),
        weight_decay=decay,
        lr_scale=[dense_scale] * len(head.dense) + [1.0] * len(head.rowwise),
        lazy=config.sampled_adam == "lazy",
    )


def _sampler(setup: _Setup, proposal: str, num_samples: int, config: TrainConfig, seed: int) -> NegativeSampler:
    q = proposal_probabilities(proposal, setup.marginal, config.prior_smoothing)
    tied = setup.tied
    if tied is not None:
        q[-1] = 0.0
        q = q / q.sum()
    always = None if tied is None else torch.tensor([tied.width - 1], device=setup.marginal.device)
    return NegativeSampler(q, num_samples, torch.Generator().manual_seed(seed + 1), always=always)


def _trained(setup: _Setup, stopping: EarlyStopping, epochs_run: int) -> TrainedHeads:
    """Each layer's best epoch, as scoring takes it (the tied row expanded back to every unseen id)."""
    head = setup.head
    for p, saved in zip(head.dense + head.rowwise, stopping.best):
        p.data.copy_(saved)
    if setup.tied is not None:
        weight, bias = (p.index_select(1, setup.tied.rows) for p in head.rowwise)
    else:
        weight, bias = head.output(None, head.rowwise)
    return TrainedHeads(
        weight=weight.detach(),
        bias=bias.detach(),
        features=_frozen_features(head),
        best_epoch=stopping.best_epoch.tolist(),
        validation_ce_nats=stopping.best_ce.tolist(),
        epochs_run=epochs_run,
        start=setup.start,
        converged=stopping.converged,
    )


def batch_loss(
    head: Head, z: torch.Tensor, targets: BagTargets, candidates: Candidates | None = None
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
    head: Head,
    optimizer: AdamW,
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


def _frozen_features(head: Head) -> Callable[[torch.Tensor], torch.Tensor]:
    def features(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head.features(z)

    return features
