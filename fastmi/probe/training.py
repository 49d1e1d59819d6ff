"""Fitting linear probes for many layers at once, as one layer-batched problem.

The features of L layers are stacked into z [L, N, d] and the probes into W [L, M, d], b [L, M];
one call of :func:`fastmi.kernels.bag_cross_entropy` gives the L losses.  The layers never
interact: the summed loss has a block-diagonal Hessian and Adam's update is elementwise, so each
layer follows exactly the path it would follow alone, and each keeps its own best weights.

Why Adam with minibatches: the problem is convex, but with d in the hundreds and M in the thousands
the probe has far more parameters than there are sentences, so it is early stopping on validation
rows that picks the answer, and a few cheap passes with a tuned step get there sooner on a CPU than
L-BFGS's full-batch line searches.  The bias starts at the log of the (smoothed) training marginal of
T, so epoch 0 already scores the "ignore z" probe and no layer can end worse than that on validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from fastmi import kernels
from fastmi.data.bags import BagTargets
from fastmi.probe.adamw import AdamW
from fastmi.probe.config import TrainConfig
from fastmi.probe.precision import loss_operands, matmul_precision

__all__ = [
    "TrainConfig",
    "FittedProbes",
    "EarlyStopping",
    "fit_probes",
    "train_epochs",
    "new_probes",
    "train_step",
    "standardize",
    "token_marginal",
    "prior_logits",
    "probe_bytes",
]


@dataclass
class FittedProbes:
    weight: torch.Tensor  # [L, M, d], for standardised features
    bias: torch.Tensor  # [L, M]
    best_epoch: list[int] = field(default_factory=list)
    validation_ce_nats: list[float] = field(default_factory=list)
    epochs_run: int = 0
    converged: list[bool] = field(default_factory=list)  # stopped by patience, not by max_epochs


def standardize(z: torch.Tensor, train_rows: torch.Tensor) -> torch.Tensor:
    """Centre and scale each feature of each layer by its training mean and std.

    Residual streams of decoders differ by orders of magnitude across layers and features; the probe
    stays linear (an affine map of z), but one step size then suits every layer.  Features that are
    constant on the training rows become 0.
    """
    train = z[:, train_rows]
    mean = train.mean(dim=1, keepdim=True)
    std = train.std(dim=1, keepdim=True)
    floor = 1e-6 * std.amax(dim=-1, keepdim=True).clamp(min=1e-30)
    std = torch.where(std > floor, std, torch.ones_like(std))
    return (z - mean) / std


def token_marginal(targets: BagTargets, alphabet_size: int) -> torch.Tensor:
    """p(t) = mean over rows of count_S(t) / n_S, float64 [M] (empty rows ignored)."""
    lengths = targets.lengths.double()
    weights = targets.counts.double() / lengths[targets.row_index]
    p = torch.zeros(alphabet_size, dtype=torch.float64, device=weights.device).index_add_(0, targets.ids, weights)
    return p / max(int((lengths > 0).sum()), 1)


def prior_logits(targets: BagTargets, alphabet_size: int, config: TrainConfig, num_layers: int) -> torch.Tensor:
    """b of the "ignore z" probe, every probe's bias at epoch 0: log of the training marginal mixed with
    ``prior_smoothing`` of uniform mass, float32 [L, M] (a view: clone before training it)."""
    prior = token_marginal(targets, alphabet_size)
    prior = (1 - config.prior_smoothing) * prior + config.prior_smoothing / alphabet_size
    return prior.log().float().expand(num_layers, -1)


def probe_bytes(num_rows: int, dim: int, alphabet_size: int, batch_size: int) -> int:
    """Bytes one layer needs while training; kept for callers of the old name (see :mod:`fastmi.probe.memory`)."""
    from fastmi.probe.memory import probe_layer_bytes

    return probe_layer_bytes(num_rows, dim, alphabet_size, batch_size)


class EarlyStopping:
    """Per-layer early stopping on validation cross-entropy, shared by every probe form.

    Keeps each layer's best parameters (slice ``[layer]`` of each tensor) and its best epoch; says
    when every layer has gone ``patience`` epochs without improving by ``min_improvement`` nats.
    """

    def __init__(self, params: list[torch.Tensor], validation_ce: torch.Tensor, config: TrainConfig) -> None:
        self.best = [p.detach().clone() for p in params]
        self.best_ce = validation_ce
        self.best_epoch = torch.zeros(validation_ce.shape[0], dtype=torch.long)
        self.stale = torch.zeros_like(self.best_epoch)
        self.patience, self.min_improvement = config.patience, config.min_improvement

    def update(self, epoch: int, params: list[torch.Tensor], validation_ce: torch.Tensor) -> bool:
        """Record an epoch's validation CE [L]; True once no layer is improving any more."""
        improved = (validation_ce < self.best_ce - self.min_improvement).cpu()
        if bool(improved.any()):
            layers = torch.nonzero(improved).flatten().to(validation_ce.device)
            for saved, p in zip(self.best, params):
                saved[layers] = p.detach()[layers]
            self.best_ce = torch.where(improved.to(validation_ce.device), validation_ce, self.best_ce)
            self.best_epoch[improved] = epoch
        self.stale = torch.where(improved, torch.zeros_like(self.stale), self.stale + 1)
        return bool((self.stale >= self.patience).all())

    @property
    def converged(self) -> list[bool]:
        """Per layer: stopped by patience.  A layer still improving when max_epochs ran out is not."""
        return (self.stale >= self.patience).tolist()


@torch.no_grad()
def mean_ce(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: BagTargets, chunk: int) -> torch.Tensor:
    """Mean per-row cross-entropy (nats) of each layer, in row chunks to bound memory: [L]."""
    total = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    for start in range(0, z.shape[1], chunk):
        rows = torch.arange(start, min(start + chunk, z.shape[1]), device=z.device)
        total += kernels.bag_cross_entropy(z[:, rows], weight, bias, targets.select(rows), reduction="sum").double()
    return total / max(int((targets.lengths > 0).sum()), 1)


def new_probes(
    log_prior: torch.Tensor,
    dim: int,
    config: TrainConfig,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, AdamW]:
    """W [L, M, d] = ``start`` (default 0), b [L, M] = ``log_prior`` (the "ignore z" probe) and their
    AdamW, whose weight decay pulls W toward its start (``embedding_decay`` for a given start,
    ``weight_decay`` toward 0)."""
    num_layers, alphabet_size = log_prior.shape
    weight = torch.zeros(num_layers, alphabet_size, dim, device=log_prior.device)
    if start is not None:
        weight.copy_(start)
    weight.requires_grad_(True)
    bias = log_prior.clone().requires_grad_(True)
    optimizer = AdamW(
        [weight, bias],
        lr=config.lr / math.sqrt(max(dim, 1)),
        weight_decay=(_weight_decay(config, start), 0.0),
        anchors=(start, None),
    )
    return weight, bias, optimizer


def _weight_decay(config: TrainConfig, start: torch.Tensor | None) -> float | torch.Tensor:
    """W's decay: ``weight_decay`` toward 0, or per layer [L, 1, 1] ``embedding_decay`` toward a start
    from the model's embedding (a layer whose validation chose the zero start trains as the linear
    probe does)."""
    if start is None:
        return config.weight_decay
    embedded = start.flatten(1).abs().amax(dim=1) > 0
    decay = torch.where(embedded, config.embedding_decay, config.weight_decay)
    return decay.to(start.dtype).view(-1, 1, 1)


@torch.no_grad()
def perturb_start(weight: torch.Tensor, init_seed: int | None) -> None:
    """With a seed, W [L, M, d] drawn from N(0, (0.1 / sqrt(d))^2): on standardised features the
    start's logits differ from the prior-only probe's by about 0.1 nat.  None leaves W as it is."""
    if init_seed is None:
        return
    generator = torch.Generator().manual_seed(int(init_seed))
    noise = torch.randn(weight.shape, generator=generator) * (0.1 / math.sqrt(max(weight.shape[-1], 1)))
    weight.add_(noise.to(weight.device, weight.dtype))


def train_step(
    z_train: torch.Tensor,
    rows: torch.Tensor,
    targets_train: BagTargets,
    weight: torch.Tensor,
    bias: torch.Tensor,
    optimizer: AdamW,
    precision: str,
) -> None:
    """One AdamW step of every layer's probe on the training ``rows`` (the planner times this too)."""
    with matmul_precision(precision):
        z_loss, w_loss = loss_operands(precision, z_train[:, rows], weight)
        losses = kernels.bag_cross_entropy(z_loss, w_loss, bias, targets_train.select(rows), reduction="mean")
    weight.grad = bias.grad = None
    losses.sum().backward()
    optimizer.step()


def train_epochs(
    step: Callable[[torch.Tensor], None],
    validation_ce: Callable[[], torch.Tensor],
    params: list[torch.Tensor],
    num_rows: int,
    config: TrainConfig,
    seed: int,
    progress: bool,
    description: str,
    optimizer: AdamW | None = None,
) -> tuple[EarlyStopping, int]:
    """The epoch loop of every probe: ``step(rows)`` trains on one minibatch of training rows (a
    seeded shuffle each epoch), ``validation_ce()`` scores ``params`` per layer [L] after each epoch,
    until every layer has stopped improving or ``max_epochs`` ran out.  Returns the stopping record
    (each layer's best parameters) and the number of epochs run.

    With ``config.plateau_factor`` below 1, each epoch that leaves a layer without a new best
    multiplies that layer's step size in ``optimizer`` by it: a layer whose validation CE stalls
    because a constant step keeps it circling the optimum takes smaller steps instead of stopping."""
    stopping = EarlyStopping(params, validation_ce(), config)
    lower_on_plateau = optimizer is not None and config.plateau_factor < 1.0
    if lower_on_plateau:
        optimizer.layer_lr = torch.ones(len(stopping.best_ce), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(config.batch_size, 1)
    epochs = tqdm(range(1, config.max_epochs + 1), desc=description, leave=False, disable=not progress)
    epoch = 0
    for epoch in epochs:
        order = torch.randperm(num_rows, generator=generator).to(params[0].device)
        for start in range(0, num_rows, chunk):
            step(order[start : start + chunk])
        done = stopping.update(epoch, params, validation_ce())
        if lower_on_plateau:
            stalled = stopping.stale > 0
            optimizer.layer_lr[stalled] *= config.plateau_factor
        epochs.set_postfix(val_ce=f"{float(stopping.best_ce.mean()):.3f}", stale=int(stopping.stale.min()))
        if done:
            break
    epochs.close()
    return stopping, epoch


def fit_probes(
    z_train: torch.Tensor,
    targets_train: BagTargets,
    z_val: torch.Tensor,
    targets_val: BagTargets,
    alphabet_size: int,
    config: TrainConfig,
    seed: int = 0,
    progress: bool = True,
    description: str = "probe",
    init_seed: int | None = None,
    start: torch.Tensor | None = None,
) -> FittedProbes:
    """Fit one linear probe per layer of ``z_train`` [L, N, d]; early-stop on ``z_val`` [L, Nv, d].

    Rows must be non-empty bags with compact ids < ``alphabet_size``.  ``init_seed``: start from a
    random W near 0 (:func:`perturb_start`) instead of W = 0 (further probes of ``probe_seeds``).
    ``start``: W [L, M, d] at epoch 0 instead of 0, which W's decay then pulls it toward (the
    embedding probe's start, :mod:`fastmi.probe.embedding_start`).
    """
    num_layers, num_rows, dim = z_train.shape
    log_prior = prior_logits(targets_train, alphabet_size, config, num_layers)
    weight, bias, optimizer = new_probes(log_prior, dim, config, start)
    perturb_start(weight, init_seed)
    chunk = max(config.batch_size, 1)

    def step(rows: torch.Tensor) -> None:
        train_step(z_train, rows, targets_train, weight, bias, optimizer, config.precision)

    def validation_ce() -> torch.Tensor:
        return mean_ce(z_val, weight.detach(), bias.detach(), targets_val, chunk)

    stopping, epochs_run = train_epochs(
        step, validation_ce, [weight, bias], num_rows, config, seed, progress, description, optimizer
    )
    best_weight, best_bias = stopping.best
    return FittedProbes(
        weight=best_weight,
        bias=best_bias,
        best_epoch=stopping.best_epoch.tolist(),
        validation_ce_nats=stopping.best_ce.tolist(),
        epochs_run=epochs_run,
        converged=stopping.converged,
    )
