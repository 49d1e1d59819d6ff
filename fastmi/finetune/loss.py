"""``RecoverabilityLoss``: the probe's bag-of-tokens cross-entropy as a training objective.

The variational bound I(T; z) >= H(T) - CE says that lowering the cross-entropy of a linear probe
on a layer's pooled state raises a lower bound on how much of the sentence that layer keeps.  Added
to a model's loss, this term fine-tunes the model (and the probe with it) towards layers that keep
more of their input: the paper's third claim (docs/finetune.md).

Written for real training code:

* **Compute dtype fp32, always.**  Hidden states and probe may be fp32, bf16 or fp16 in any mix
  (bf16 models, ``torch.autocast``): the pooled state and the probe are widened to fp32 and
  autocast is switched off inside the loss, so the value is the fp32 reference of the inputs as
  given, and gradients flow back in each input's own dtype.
* **torch.compile**: bag building, pooling and the fused loss run eagerly between the compiled
  graphs of the calling module (graph breaks, never a recompilation per bag layout).
* **DDP / gradient checkpointing**: a plain differentiable function of the hidden states; the probe
  is an ordinary ``nn.Module`` whose parameters DDP reduces like any other.
* **Bags from ``input_ids``** are built on the batch's device by :func:`fastmi.data.input_bags.bags_from_input_ids`.
* **Normalised tokens** (``normalize=True``, the default): each token's hidden state is
  layer-normalised (no affine) before pooling, as the model's own next block reads it.  Decoder
  residual streams carry massive activations (SmolLM2-135M's first token holds one coordinate in the
  thousands at its middle layer, so the mean-pooled state has one coordinate ~1,000 and the rest ~1):
  raw, one Adam step of the probe moves the logits by nats and the term diverges within tens of
  steps (seen: 10.8 -> 22 nats by step 20).  Normalising the pooled row instead squashes every other
  coordinate by the massive one's size, and the probe barely learns; per token, the massive
  coordinate is tamed where it occurs.  Stateless, so DDP, compile and resumption are unaffected;
  and any decoder of the hidden states gives a valid bound (docs/theory.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastmi import kernels
from fastmi.data.bags import BagTargets
from fastmi.data.input_bags import bags_from_input_ids
from fastmi.finetune.frozen import warn_if_frozen

__all__ = ["RecoverabilityLoss", "MultiLayerRecoverabilityLoss", "COMPUTE_DTYPE", "pool_states"]

COMPUTE_DTYPE = torch.float32  # pooling, logits, LSE and the loss itself


class RecoverabilityLoss(nn.Module):
    """Linear probe on a pooled hidden state, scored by the bag-of-tokens cross-entropy (nats).

    ``forward(hidden [B, T, d], attention_mask [B, T], targets)`` pools ``hidden`` over the unmasked
    positions (``pooling``: "mean", "first", "last" or "max"), applies the probe and returns the mean
    over sentences of (1/n) sum_i -log q(x_i | z), in fp32 (:data:`COMPUTE_DTYPE`).  ``targets`` is
    a :class:`fastmi.BagTargets` of ids < ``vocab_size``, or the ``input_ids`` [B, T] themselves:
    then the bag of each row is built from its unmasked ids, without ``exclude_ids`` (pass the
    tokenizer's special ids).  The logits are never materialised:
    :func:`fastmi.kernels.bag_cross_entropy` fuses them.  ``normalize`` (default True) layer-normalises
    each token's state (no affine) before pooling, so that massive activations cannot make the
    probe's steps diverge (module docstring); it costs one fp32 copy of ``hidden``.

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

    With the Hugging Face Trainer, :class:`fastmi.finetune.trainer.RecoverabilityTrainer` does this.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        pooling: str = "mean",
        exclude_ids: Sequence[int] = (),
        bias: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "first", "last", "max"):
            raise ValueError(f"pooling must be 'mean', 'first', 'last' or 'max', got {pooling!r}")
        self.hidden_size, self.vocab_size, self.pooling = hidden_size, vocab_size, pooling
        self.exclude_ids = sorted({int(i) for i in exclude_ids})
        self.normalize = bool(normalize)
        # Zero weights and biases: training starts from the uniform guess, log(V) nats.
        self.weight = nn.Parameter(torch.zeros(vocab_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, vocab_size={self.vocab_size}, pooling={self.pooling!r}, "
            f"normalize={self.normalize}"
        )

    def bags(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> BagTargets:
        """Bags of the unmasked ids of each row, special ids left out, on ``input_ids.device``."""
        return bags_from_input_ids(input_ids, attention_mask, self.exclude_ids, self.vocab_size)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled state z [B, d] (of the normalised tokens, by default) in fp32, differentiable."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden must be [B, T, {self.hidden_size}], got shape {tuple(hidden.shape)}")
        warn_if_frozen(hidden)  # a frozen model would silently train the probe alone
        return pool_states(hidden, attention_mask, self.pooling, self.normalize)

    def loss_of_pooled(self, z: torch.Tensor, bags: BagTargets) -> torch.Tensor:
        if bags.num_rows != z.shape[0]:
            raise ValueError(f"targets have {bags.num_rows} rows but hidden has {z.shape[0]} sentences")
        return _bag_loss(z, self.weight, self.bias, bags.to(z.device))

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, targets: BagTargets | torch.Tensor
    ) -> torch.Tensor:
        z = self.pool(hidden, attention_mask)
        bags = targets if isinstance(targets, BagTargets) else self.bags(targets, attention_mask)
        return self.loss_of_pooled(z, bags)


class MultiLayerRecoverabilityLoss(nn.Module):
    """One :class:`RecoverabilityLoss` probe per layer, summed with weights.

    ``forward(hidden_states, attention_mask, targets)`` takes the model's ``hidden_states`` (the
    tuple of ``output_hidden_states=True``, indexed by layer, or a ``{layer: [B, T, d]}`` mapping)
    and returns ``sum_l w_l * CE_l``.  ``layer_weights`` defaults to ``1 / len(layers)`` each, so
    the term's scale (and a good lambda) does not depend on how many layers are tuned.  The bags
    are built once and shared by every layer.  ``probes[str(layer)]`` is each layer's probe;
    :meth:`layer_losses` returns the unweighted per-layer terms (for logging).
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        layers: Sequence[int],
        layer_weights: Sequence[float] | None = None,
        pooling: str = "mean",
        exclude_ids: Sequence[int] = (),
        bias: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        layers = [int(layer) for layer in layers]
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be a non-empty list of distinct layers, got {layers}")
        if layer_weights is None:
            layer_weights = [1.0 / len(layers)] * len(layers)
        if len(layer_weights) != len(layers):
            raise ValueError(f"{len(layer_weights)} layer_weights for {len(layers)} layers")
        self.layers = layers
        self.probes = nn.ModuleDict(
            {
                str(layer): RecoverabilityLoss(hidden_size, vocab_size, pooling, exclude_ids, bias, normalize)
                for layer in layers
            }
        )
        self.register_buffer("layer_weights", torch.tensor([float(w) for w in layer_weights]))

    @property
    def exclude_ids(self) -> list[int]:
        return self.probes[str(self.layers[0])].exclude_ids

    @property
    def vocab_size(self) -> int:
        return self.probes[str(self.layers[0])].vocab_size

    def bags(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> BagTargets:
        return self.probes[str(self.layers[0])].bags(input_ids, attention_mask)

    def layer_losses(
        self,
        hidden_states: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
        attention_mask: torch.Tensor,
        targets: BagTargets | torch.Tensor,
    ) -> dict[int, torch.Tensor]:
        """Unweighted CE (nats) of each layer's probe."""
        bags = targets if isinstance(targets, BagTargets) else self.bags(targets, attention_mask)
        available = len(hidden_states)
        losses = {}
        for layer in self.layers:
            if not isinstance(hidden_states, Mapping) and not 0 <= layer < available:
                raise ValueError(f"layer {layer} is not among the {available} hidden states (0..{available - 1})")
            probe = self.probes[str(layer)]
            losses[layer] = probe.loss_of_pooled(probe.pool(hidden_states[layer], attention_mask), bags)
        return losses

    def combine(self, losses: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """``sum_l w_l * losses[l]``."""
        weights = self.layer_weights.to(COMPUTE_DTYPE)
        return sum(weights[i] * losses[layer] for i, layer in enumerate(self.layers))

    def forward(
        self,
        hidden_states: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
        attention_mask: torch.Tensor,
        targets: BagTargets | torch.Tensor,
    ) -> torch.Tensor:
        return self.combine(self.layer_losses(hidden_states, attention_mask, targets))


def pool_states(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean", normalize: bool = True
) -> torch.Tensor:
    """The pooled state z [B, d] in fp32 that the term's probe reads: each token's state
    layer-normalised (no affine) when ``normalize``, then pooled over the unmasked positions.  The
    held-out evaluation of the term's quantity (:mod:`fastmi.finetune.objective_bound`) pools with it
    too, so that it reads exactly what training read."""
    if normalize:
        with _no_autocast(hidden.device):
            hidden = F.layer_norm(hidden.to(COMPUTE_DTYPE), hidden.shape[-1:])
    return _pool(hidden, attention_mask.to(hidden.device), pooling)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


# Pooling and the fused loss run eagerly under torch.compile: they pick their backend from the
# environment and the kernel reads the CSR offsets on the host.
@torch.compiler.disable
def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    # The Triton pooling kernel has no backward; the torch path is exact on any device and
    # differentiable, so it serves whenever the model is being trained through this loss.
    with _no_autocast(hidden.device):
        if hidden.requires_grad and torch.is_grad_enabled():
            with kernels.backend("cpu"):
                return kernels.masked_pool(hidden, mask, mode).to(COMPUTE_DTYPE)
        return kernels.masked_pool(hidden, mask, mode).to(COMPUTE_DTYPE)


@torch.compiler.disable
def _bag_loss(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bags: BagTargets) -> torch.Tensor:
    # Explicit widening (not the kernel's own handling of mixed dtypes): every backend then sees one
    # dtype, and the result is the fp32 reference of the inputs whatever mix they came in.
    with _no_autocast(z.device):
        w = weight.to(COMPUTE_DTYPE)
        b = None if bias is None else bias.to(COMPUTE_DTYPE)
        return kernels.bag_cross_entropy(
            z.to(COMPUTE_DTYPE), w.to(z.device), None if b is None else b.to(z.device), bags, reduction="mean"
        )
