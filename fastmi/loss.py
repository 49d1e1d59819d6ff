"""``RecoverabilityLoss``: the probe's bag-of-tokens cross-entropy as a training objective.

The variational bound I(T; z) >= H(T) - CE says that lowering the cross-entropy of a linear probe
on a layer's pooled state raises a lower bound on how much of the sentence that layer keeps.  Added
to a model's loss, this term fine-tunes the model (and the probe with it) towards layers that keep
more of their input: the paper's third claim.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from . import kernels
from .bags import BagTargets
from .frozen import warn_if_frozen

__all__ = ["RecoverabilityLoss"]


class RecoverabilityLoss(nn.Module):
    """Linear probe on a pooled hidden state, scored by the bag-of-tokens cross-entropy (nats).

    ``forward(hidden [B, T, d], attention_mask [B, T], targets)`` pools ``hidden`` over the unmasked
    positions (``pooling``: "mean", "first", "last" or "max"), applies the probe and returns the mean
    over sentences of (1/n) sum_i -log q(x_i | z).  ``targets`` is a :class:`fastmi.BagTargets` of
    ids < ``vocab_size``, or the ``input_ids`` [B, T] themselves: then the bag of each row is built
    from its unmasked ids, without ``exclude_ids`` (pass the tokenizer's special ids).  The logits
    are never materialised: :func:`fastmi.kernels.bag_cross_entropy` fuses them.

    Example, fine-tuning a model so that its layer 6 keeps more of each sentence::

        import fastmi, torch
        model = AutoModel.from_pretrained(name)              # any transformers model
        recover = fastmi.RecoverabilityLoss(model.config.hidden_size, len(tokenizer),
                                            exclude_ids=tokenizer.all_special_ids)
        optimizer = torch.optim.AdamW([*model.parameters(), *recover.parameters()], lr=1e-5)
        for batch in loader:                                 # tokenizer(..., padding=True)
            out = model(**batch, output_hidden_states=True)
            loss = task_loss(out) + 0.1 * recover(out.hidden_states[6], batch["attention_mask"],
                                                  batch["input_ids"])
            optimizer.zero_grad(); loss.backward(); optimizer.step()
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        pooling: str = "mean",
        exclude_ids: Sequence[int] = (),
        bias: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "first", "last", "max"):
            raise ValueError(f"pooling must be 'mean', 'first', 'last' or 'max', got {pooling!r}")
        self.hidden_size, self.vocab_size, self.pooling = hidden_size, vocab_size, pooling
        self.exclude_ids = sorted({int(i) for i in exclude_ids})
        # Zero weights and biases: training starts from the uniform guess, log(V) nats.
        self.weight = nn.Parameter(torch.zeros(vocab_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, vocab_size={self.vocab_size}, pooling={self.pooling!r}"

    def bags(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BagTargets:
        """Bags of the unmasked ids of each row, special ids left out."""
        keep = attention_mask.bool()
        rows = [ids[mask].tolist() for ids, mask in zip(input_ids.cpu(), keep.cpu())]
        return BagTargets.from_token_lists(rows, exclude=self.exclude_ids, vocab_size=self.vocab_size)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, targets: BagTargets | torch.Tensor
    ) -> torch.Tensor:
        if hidden.dim() != 3 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden must be [B, T, {self.hidden_size}], got shape {tuple(hidden.shape)}")
        warn_if_frozen(hidden)  # a frozen model would silently train the probe alone
        bags = targets if isinstance(targets, BagTargets) else self.bags(targets, attention_mask)
        if bags.num_rows != hidden.shape[0]:
            raise ValueError(f"targets have {bags.num_rows} rows but hidden has {hidden.shape[0]} sentences")
        # The Triton pooling kernel has no backward; the torch path is exact on any device and
        # differentiable, so it serves whenever the model is being trained through this loss.
        grad_safe = kernels.backend("cpu") if hidden.requires_grad else contextlib.nullcontext()
        with grad_safe:
            z = kernels.masked_pool(hidden, attention_mask.to(hidden.device), self.pooling)
        return kernels.bag_cross_entropy(z, self.weight, self.bias, bags.to(z.device), reduction="mean")
