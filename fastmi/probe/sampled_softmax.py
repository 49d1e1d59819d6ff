"""Sampled-softmax training of the probe: each step trains on a small sub-vocabulary, never on all M ids.

Why it is allowed: the bounds are computed on held-out sentences with the exact, full-vocabulary
softmax of whatever probe training produced, and the held-out cross-entropy of *any* fixed decoder
bounds H(T | z) from above (docs/theory.md, "How the probe is trained does not matter").  Sampling
only changes which probe we end up with, and early stopping, also on the exact full-vocabulary
validation cross-entropy, keeps the best one seen.

One step, for a batch of bags (``fastmi.BagTargets`` with compact ids < M):

* draw K ids j_1..j_K from a proposal Q over the alphabet (with replacement), shared by every row
  of the batch and every layer of the group, so the sub-problem stays one layer-batched
  ``bag_cross_entropy`` call on the gathered rows ``W[:, S]`` (no [B, M] tensor, no [L, M, d]
  gradient);
* the sub-vocabulary S is the union of the batch's own bag ids (kept with certainty) and the
  distinct draws;
* log-Q correction: the partition function sum_v exp(s_v) is estimated by the exact sum over the
  batch's ids plus the importance-sampling estimate (1/K) sum_k exp(s_{j_k}) / Q(j_k) over draws
  outside them.  A distinct draw j drawn m_j times therefore enters the LSE with the logit
  ``s_j + log m_j - log(K Q(j))``; draws that hit a batch id are dropped (that id is already
  counted exactly).  The estimate is unbiased for the partition function at every step.

Proposals (``"sampled:K:unigram"`` / ``"sampled:K:loguniform"`` / ``"sampled:K:uniform"``; plain
``"sampled:K"`` is :data:`DEFAULT_PROPOSAL`): the smoothed training marginal of T, the log-uniform
(Zipf) law over the ids ranked by training frequency, as in word2vec-era language models, or
uniform.  Uniform draws the rare ids that a batch's own bags seldom hold, where the others mostly
re-draw frequent ids the batch already has; on 10,000 sentences it came closest to the full softmax
(docs/performance.md).  The default, unigram, was chosen by measurement (docs/performance.md, "Probe
settings for large vocabularies"): on the 5,000-symbol Zipf channel of the tests both end within
0.03 bit of each other (unigram and log-uniform), and unigram is the cheaper, since its draws repeat
the batch's frequent ids and leave a smaller sub-vocabulary.

The optimiser is :class:`RowSparseAdam`: by default with dense moments (every row's moments decay and
every row moves by its momentum each step, as under the full softmax), or lazily (only the rows in S
move, O(|S| d) per step).  Dense moments end closest to full-softmax training (docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastmi.data.bags import BagTargets

__all__ = [
    "parse_train_softmax",
    "proposal_probabilities",
    "NegativeSampler",
    "Candidates",
    "RowSparseAdam",
    "TRAIN_SOFTMAX_SETTINGS",
    "PROPOSALS",
    "DEFAULT_PROPOSAL",
]

TRAIN_SOFTMAX_SETTINGS = ("full", "sampled:K", "sampled:K:unigram", "sampled:K:loguniform", "sampled:K:uniform")
PROPOSALS = ("unigram", "loguniform", "uniform")
DEFAULT_PROPOSAL = "unigram"


def parse_train_softmax(setting: str) -> tuple[int | None, str | None]:
    """``"full"`` -> (None, None); ``"sampled:K[:proposal]"`` -> (K, proposal); a clear error otherwise."""
    if setting == "full":
        return None, None
    parts = setting.split(":") if isinstance(setting, str) else []
    if len(parts) in (2, 3) and parts[0] == "sampled":
        proposal = parts[2] if len(parts) == 3 else DEFAULT_PROPOSAL
        try:
            k = int(parts[1])
        except ValueError:
            k = 0
        if k >= 1 and proposal in PROPOSALS:
            return k, proposal
    raise ValueError(
        f"train_softmax must be 'full' or 'sampled:K' with an integer K >= 1, optionally "
        f"'sampled:K:unigram', 'sampled:K:loguniform' or 'sampled:K:uniform'; got {setting!r}"
    )


def proposal_probabilities(kind: str, train_marginal: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Q over the M compact ids, float64 on the marginal's device, summing to 1.

    ``train_marginal``: p(t) on the training rows (:func:`fastmi.probe.training.token_marginal`).
    "unigram" mixes in ``smoothing`` of uniform mass so every id can be drawn; "loguniform" gives the
    id of frequency rank r (0 = most frequent, ties to the smaller id) mass log((r+2)/(r+1)) / log(M+1);
    "uniform" gives every id 1/M.
    """
    size = train_marginal.numel()
    if kind == "unigram":
        return (1 - smoothing) * train_marginal / train_marginal.sum().clamp(min=1e-300) + smoothing / size
    if kind == "loguniform":
        order = torch.sort(train_marginal, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(size, device=order.device)
        r = rank.double()
        return torch.log((r + 2) / (r + 1)) / math.log(size + 1)
    if kind == "uniform":
        return torch.full((size,), 1.0 / size, dtype=torch.float64, device=train_marginal.device)
    raise ValueError(f"proposal must be one of {PROPOSALS}, got {kind!r}")


@dataclass
class Candidates:
    """The sub-vocabulary of one step."""

    ids: torch.Tensor  # [S] sorted distinct compact ids: the batch's own ids and the kept draws
    correction: torch.Tensor  # [S] fp32, added to the logits: 0 for batch ids, log(m_j / (K Q_j)) for draws
    targets: BagTargets  # the batch's bags, ids replaced by their positions in ``ids``


class NegativeSampler:
    """Draws the K shared negatives of each step from ``proposal`` (float64 [M]) with ``generator``.

    ``always``: sorted ids that every sub-vocabulary holds exactly, like the batch's own ids, whether
    or not the batch has them (the tied row of the ids never seen in training, :mod:`fastmi.probe.heads`);
    their proposal mass should be 0.
    """

    def __init__(
        self,
        proposal: torch.Tensor,
        num_samples: int,
        generator: torch.Generator,
        always: torch.Tensor | None = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"the number of sampled negatives must be at least 1, got {num_samples}")
        self.proposal = proposal
        self.num_samples = num_samples
        self.generator = generator
        # Inverse-CDF sampling on the host: one searchsorted, reproducible from the seed alone.
        cdf = torch.cumsum(proposal.detach().double().cpu(), 0)
        self.cdf = cdf / cdf[-1]
        self.always = always

    def draw(self, batch: BagTargets) -> Candidates:
        device = batch.ids.device
        u = torch.rand(self.num_samples, dtype=torch.float64, generator=self.generator)
        draws = torch.searchsorted(self.cdf, u, right=True).clamp(max=self.cdf.numel() - 1).to(device)
        drawn, multiplicity = torch.unique(draws, return_counts=True)
        own = torch.unique(batch.ids if self.always is None else torch.cat([batch.ids, self.always.to(device)]))
        hits_own = torch.isin(drawn, own)
        drawn, multiplicity = drawn[~hits_own], multiplicity[~hits_own]
        ids = torch.cat([own, drawn]).sort().values  # disjoint, so already distinct
        correction = torch.zeros(ids.numel(), dtype=torch.float32, device=device)
        log_weight = multiplicity.double().log() - (self.num_samples * self.proposal.to(device)[drawn]).log()
        correction[torch.searchsorted(ids, drawn)] = log_weight.float()
        # Positions in the sorted S: a monotone map, so every row's ids stay sorted and distinct.
        targets = BagTargets(batch.offsets, torch.searchsorted(ids, batch.ids), batch.counts)
        return Candidates(ids=ids, correction=correction, targets=targets)


class RowSparseAdam:
    """AdamW (Loshchilov & Hutter) whose gradient may cover only some rows of a parameter.

    Parameters are [L, R, ...] tensors; :meth:`step` takes, per parameter, its gradient and either
    None (the gradient covers every row) or the indices along dim 1 that it covers, optionally with
    a third item: a copy of the parameter's values at those rows, which the step then updates in
    place instead of gathering them again (the sampled loss has gathered them already).  Rows not
    covered keep their value and their moments, as in TensorFlow's LazyAdam, so a sampled step
    costs O(|S|) rows, not O(M) (``lazy=True``).  With ``lazy=False`` ("dense moments") the step is
    plain AdamW with a zero gradient on the rows not covered: every row's moments decay and every
    row moves by its momentum, as every row does under the full softmax, where each step pushes
    down all the ids a batch lacks; it costs a few elementwise passes over all M rows (what a
    full-softmax step's optimiser costs too), but no [L, M, d] gradient.  The bias corrections use
    the global step count.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: float,
        weight_decay: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lr_scale: Sequence[float] | None = None,
        lazy: bool = True,
    ) -> None:
        self.params, self.lr, self.weight_decay, self.lazy = list(params), lr, list(weight_decay), lazy
        self.lr_scale = list(lr_scale) if lr_scale is not None else [1.0] * len(self.params)
        self.betas, self.eps, self.steps = betas, eps, 0
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]

    @torch.no_grad()
    def step(self, grads: Sequence[tuple]) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        correction2 = math.sqrt(1 - beta2**self.steps)
        for p, (m, v), decay, scale, (grad, rows, *gathered) in zip(
            self.params, self.moments, self.weight_decay, self.lr_scale, grads
        ):
            if grad is None:
                continue
            if rows is not None and not self.lazy:
                if decay:
                    p.mul_(1 - self.lr * decay)
                m.mul_(beta1).index_add_(1, rows, grad, alpha=1 - beta1)
                v.mul_(beta2).index_add_(1, rows, grad * grad, alpha=1 - beta2)
                p.addcdiv_(m, v.sqrt().div_(correction2).add_(self.eps), value=-step_size * scale)
                continue
            if rows is None:
                p_rows, m_rows, v_rows = p, m, v
            else:
                p_rows = gathered[0] if gathered else p.index_select(1, rows)
                m_rows, v_rows = m.index_select(1, rows), v.index_select(1, rows)
            if decay:
                p_rows.mul_(1 - self.lr * decay)
            m_rows.lerp_(grad, 1 - beta1)
            v_rows.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            p_rows.addcdiv_(m_rows, v_rows.sqrt().div_(correction2).add_(self.eps), value=-step_size * scale)
            if rows is not None:
                p.index_copy_(1, rows, p_rows)
                m.index_copy_(1, rows, m_rows)
                v.index_copy_(1, rows, v_rows)
