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

The optimiser is :class:`fastmi.probe.adamw.AdamW` with row-sparse steps: by default with dense
moments (every row's moments decay and every row moves by its momentum each step, as under the full
softmax), or lazily (only the rows in S move, O(|S| d) per step).  Dense moments end closest to
full-softmax training (docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastmi.data.bags import BagTargets
from fastmi.probe.checks import DEFAULT_PROPOSAL, PROPOSALS, parse_train_softmax

__all__ = [
    "parse_train_softmax",
    "proposal_probabilities",
    "NegativeSampler",
    "Candidates",
    "TRAIN_SOFTMAX_SETTINGS",
    "PROPOSALS",
    "DEFAULT_PROPOSAL",
]

TRAIN_SOFTMAX_SETTINGS = ("full", "sampled:K", "sampled:K:unigram", "sampled:K:loguniform", "sampled:K:uniform")


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
