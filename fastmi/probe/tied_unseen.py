"""The ids of the alphabet that no training bag holds, trained as one tied row of the linear probe
(:func:`fastmi.probe.heads.fit_heads` with ``tie_unseen``); see :class:`TiedUnseen`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastmi.data.bags import BagTargets

__all__ = ["TiedUnseen"]


@dataclass
class TiedUnseen:
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
    def build(cls, marginal: torch.Tensor) -> TiedUnseen | None:
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
