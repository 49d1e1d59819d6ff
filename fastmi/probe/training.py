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
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from fastmi import kernels
from fastmi.data.bags import BagTargets
from fastmi.probe.precision import loss_operands, matmul_precision

__all__ = [
    "TrainConfig",
    "FittedProbes",
    "EarlyStopping",
    "fit_probes",
    "new_probes",
    "train_step",
    "standardize",
    "token_marginal",
    "probe_bytes",
]


@dataclass
class TrainConfig:
    """Optimiser settings of the probe; the defaults are what converged fastest on the demo caches."""

    max_epochs: int = 40
    """Upper bound on passes over the training rows."""
    patience: int = 3
    """Stop once no layer's validation cross-entropy has improved for this many epochs."""
    batch_size: int = 256
    """Sentences per Adam step."""
    lr: float = 0.05
    """Adam step size, divided by sqrt(d) so that logits move by O(lr) per step whatever d is."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay on W; early stopping already regularises."""
    min_improvement: float = 1e-4
    """Validation gains (nats) below this do not reset the patience counter."""
    prior_smoothing: float = 0.05
    """Share of uniform mass mixed into the training marginal that initialises the bias."""
    precision: str = "auto"
    """Products of the training loss: "fp32", "tf32", "bf16" (bf16 operands, fp32 accumulation,
    fp32 master weights) or "auto" (bf16 on a GPU, fp32 on a CPU); validation and held-out scoring
    are always fp32 (fastmi/probe/precision.py)."""
    sampled_adam: str = "dense"
    """Adam's moments under sampled softmax: "dense" (every row's moments decay and every row moves
    by its momentum each step, as under the full softmax; ends closest to full-softmax training) or
    "lazy" (only the sampled rows move: O(S d) per step instead of O(M d); see
    :class:`fastmi.probe.sampled_softmax.RowSparseAdam`)."""
    tie_unseen: bool | None = None
    """Train the linear probe's ids that occur in no training bag as one tied row (exact under the
    full softmax: they stay equal anyway; :class:`fastmi.probe.heads._TiedUnseen`).  None: only under
    sampled softmax, so the full-softmax default runs :func:`fit_probes` unchanged."""


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


def probe_bytes(num_rows: int, dim: int, alphabet_size: int, batch_size: int) -> int:
    """Bytes one layer needs while training; kept for callers of the old name (see :mod:`fastmi.probe.memory`)."""
    from fastmi.probe.memory import probe_layer_bytes

    return probe_layer_bytes(num_rows, dim, alphabet_size, batch_size)


class _Adam:
    """AdamW (Loshchilov & Hutter) on a few tensors.

    Written out because ``torch.optim`` imports torch._dynamo on first use, which costs seconds of a
    cold start on a small CPU, more than the whole probe of a small model.
    """

    def __init__(self, params, lr: float, weight_decay, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.weight_decay, self.betas, self.eps = list(params), lr, weight_decay, betas, eps
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        correction2 = math.sqrt(1 - beta2**self.steps)
        for p, (m, v), decay in zip(self.params, self.moments, self.weight_decay):
            if p.grad is None:
                continue
            if decay:
                p.mul_(1 - self.lr * decay)
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.addcdiv_(m, v.sqrt().div_(correction2).add_(self.eps), value=-step_size)


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


def new_probes(log_prior: torch.Tensor, dim: int, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, _Adam]:
    """W [L, M, d] = 0, b [L, M] = ``log_prior`` (the "ignore z" probe) and their AdamW."""
    num_layers, alphabet_size = log_prior.shape
    weight = torch.zeros(num_layers, alphabet_size, dim, device=log_prior.device, requires_grad=True)
    bias = log_prior.clone().requires_grad_(True)
    optimizer = _Adam([weight, bias], lr=config.lr / math.sqrt(max(dim, 1)), weight_decay=(config.weight_decay, 0.0))
    return weight, bias, optimizer


def train_step(
    z_train: torch.Tensor,
    rows: torch.Tensor,
    targets_train: BagTargets,
    weight: torch.Tensor,
    bias: torch.Tensor,
    optimizer: _Adam,
    precision: str,
) -> None:
    """One AdamW step of every layer's probe on the training ``rows`` (the planner times this too)."""
    with matmul_precision(precision):
        z_loss, w_loss = loss_operands(precision, z_train[:, rows], weight)
        losses = kernels.bag_cross_entropy(z_loss, w_loss, bias, targets_train.select(rows), reduction="mean")
    weight.grad = bias.grad = None
    losses.sum().backward()
    optimizer.step()


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
) -> FittedProbes:
    """Fit one linear probe per layer of ``z_train`` [L, N, d]; early-stop on ``z_val`` [L, Nv, d].

    Rows must be non-empty bags with compact ids < ``alphabet_size``.
    """
    num_layers, num_rows, dim = z_train.shape
    prior = token_marginal(targets_train, alphabet_size)
    prior = (1 - config.prior_smoothing) * prior + config.prior_smoothing / alphabet_size
    weight, bias, optimizer = new_probes(prior.log().float().expand(num_layers, -1), dim, config)
    chunk = max(config.batch_size, 1)
    stopping = EarlyStopping([weight, bias], mean_ce(z_val, weight.detach(), bias.detach(), targets_val, chunk), config)
    generator = torch.Generator().manual_seed(seed)
    epochs = tqdm(range(1, config.max_epochs + 1), desc=description, leave=False, disable=not progress)
    epoch = 0
    for epoch in epochs:
        order = torch.randperm(num_rows, generator=generator).to(z_train.device)
        for start in range(0, num_rows, chunk):
            train_step(z_train, order[start : start + chunk], targets_train, weight, bias, optimizer, config.precision)
        done = stopping.update(
            epoch, [weight, bias], mean_ce(z_val, weight.detach(), bias.detach(), targets_val, chunk)
        )
        epochs.set_postfix(val_ce=f"{float(stopping.best_ce.mean()):.3f}", stale=int(stopping.stale.min()))
        if done:
            break
    epochs.close()
    best_weight, best_bias = stopping.best
    return FittedProbes(
        weight=best_weight,
        bias=best_bias,
        best_epoch=stopping.best_epoch.tolist(),
        validation_ce_nats=stopping.best_ce.tolist(),
        epochs_run=epoch,
        converged=stopping.converged,
    )
