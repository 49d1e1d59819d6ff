"""Hugging Face Trainer integration: lambda * recoverability added to a model's own loss.

Why a ``Trainer`` subclass and not a ``TrainerCallback``: a callback sees the training loop's
events (step begin/end, log, save) but never the forward's outputs nor the loss that is
back-propagated, so it cannot add a term to the loss.  The supported hook for that is
``Trainer.compute_loss``, and the probe's parameters must also reach the optimizer
(``create_optimizer``), the checkpoints (``_save`` / ``_load_from_checkpoint``) and the logs
(``log``): all of them methods of the Trainer.  :class:`RecoverabilityTrainer` overrides exactly
those five and nothing else, so everything else (PEFT models, gradient checkpointing, bf16, DDP via
torchrun, resumption, callbacks, reporting integrations) is the Trainer's own.

The objective.  With hidden states h_l of the chosen layers and probes q_l,

    loss = own_loss + lambda * sum_l w_l CE_l(q_l, pool(h_l))           (the value logged as "loss")

and lambda scales only the gradient that reaches the *model*: the probes always get the full
gradient of their cross-entropy (:func:`scale_gradient` on h_l).  So the probes track the best
linear read-out of the current model at their own learning rate in every run, the control
(lambda = 0) included, and the logged bounds of a treatment and its control are comparable.

Clipping.  The Trainer clips the gradient of what it back-propagates to ``max_grad_norm``; clipping
own + lambda * term would shrink the own loss's step more in a treatment (larger summed norm) than in
its control.  So with ``max_grad_norm > 0`` the two terms are clipped each on its own: the term's
gradient is taken apart (``torch.autograd.grad`` in ``compute_loss``), the Trainer back-propagates the
own loss alone, and ``_clip_grad_norm`` clips the own loss's gradient and lambda * d term's each to
``max_grad_norm`` before adding them.  The own loss's step is then the same function of its gradient
in every arm.  ``max_grad_norm = 0``: neither is clipped.  The logged ``grad_norm`` is the own loss's
(before clipping), ``recoverability_grad_norm`` the term's (the window's mean).  The probes' gradients
are never clipped (the Trainer clips the model's parameters only).

Logged at every logging step, beside the Trainer's own ``loss``, ``learning_rate`` ...:
``own_loss`` (the model's loss), ``recoverability`` (sum_l w_l CE_l, nats), per layer
``recoverability_ce_bits/layer_L`` and ``variational_bound_bits/layer_L`` = H(T) - CE in bits, and
``entropy_bits`` H(T).  H(T) is the plug-in entropy of the token marginal p(t) = E_S[count_S(t)/n_S]
of every training bag this process has seen (it restarts when a run resumes), CE the mean of the
logging window's training batches: a running, training-set estimate of the bound (docs/theory.md),
optimistic next to a held-out one.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from transformers import Trainer

from fastmi.finetune.frozen import FrozenHiddenStatesWarning
from fastmi.finetune.loss import MultiLayerRecoverabilityLoss
from fastmi.runtime.distributed import average_gradients
from fastmi.runtime.files import atomic_write_bytes, atomic_write_text

__all__ = ["RecoverabilityTrainer", "scale_gradient", "TokenMarginal", "PROBE_WEIGHTS", "PROBE_CONFIG"]

PROBE_WEIGHTS = "recoverability_probe.safetensors"
PROBE_CONFIG = "recoverability_probe.json"


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged in the forward; its gradient multiplied by ``factor`` in the backward
    (``factor == 0``: detached, so no backward runs through the model at all)."""
    if factor == 0.0:
        return x.detach()
    if factor == 1.0:
        return x
    return _ScaleGradient.apply(x, float(factor))


class TokenMarginal:
    """Running p(t) = E_S[count_S(t) / n_S] over the bags seen, and its plug-in entropy in bits."""

    def __init__(self, vocab_size: int) -> None:
        self.mass = torch.zeros(vocab_size, dtype=torch.float64)
        self.sentences = 0

    def update(self, bags) -> None:
        lengths = bags.lengths.to(torch.float64)
        share = bags.counts.to(torch.float64) / lengths[bags.row_index].clamp(min=1)
        self.mass.index_add_(0, bags.ids.cpu(), share.cpu())
        self.sentences += int((lengths > 0).sum())

    def entropy_bits(self) -> float:
        if self.sentences == 0:
            return float("nan")
        p = self.mass[self.mass > 0] / self.sentences
        return float(-(p * p.log2()).sum())


class RecoverabilityTrainer(Trainer):
    """``transformers.Trainer`` that adds ``lam`` * recoverability at ``recoverability.layers``.

    Args (beside the Trainer's own):
        recoverability: a :class:`fastmi.MultiLayerRecoverabilityLoss` (one probe per layer).
        lam: lambda, the weight of the term in the model's gradient (0: the control).
        probe_lr: the probes' learning rate (default: the Trainer's); no weight decay on them.

    The model must accept ``output_hidden_states=True`` and return ``hidden_states`` (every
    transformers model does, PEFT-wrapped ones too) and, for its own loss, ``loss`` from ``labels``.
    The bag of each row is its original tokens: ``labels`` where they are set (an MLM collator
    masks ``input_ids`` and keeps the originals there), ``input_ids`` elsewhere; an explicit
    ``bag_ids`` [B, T] column in the batch takes precedence.  Under DDP the probes' gradients are
    averaged over ranks by hand (they live outside the DDP-wrapped model).
    """

    def __init__(
        self,
        *args: Any,
        recoverability: MultiLayerRecoverabilityLoss,
        lam: float = 0.1,
        probe_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lambda must be a finite number >= 0, got {lam}")
        self.recoverability = recoverability.to(self.args.device)
        self.lam = float(lam)
        self.probe_lr = probe_lr if probe_lr is not None else self.args.learning_rate
        self.marginal = TokenMarginal(recoverability.vocab_size)
        self._window: dict[str, list[float]] = {}
        # max_grad_norm > 0: the own loss and lambda * recoverability are clipped each on its own
        # (the Trainer's clip of their sum would shrink the own loss's step more in a treatment than
        # in its control); max_grad_norm = 0: neither is clipped.
        self._separate_clip = self.args.max_grad_norm is not None and self.args.max_grad_norm > 0
        self._term_grads: dict[torch.nn.Parameter, torch.Tensor] = {}

    # ---- the loss ----------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        bag_ids = inputs.pop("bag_ids", None)
        if bag_ids is None:
            labels = inputs.get("labels")
            bag_ids = inputs["input_ids"] if labels is None else torch.where(labels >= 0, labels, inputs["input_ids"])
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # As the Trainer's own compute_loss: the model's loss is then a sum over the tokens of
            # every micro-batch of the step, divided by their count (it is not divided again).
            inputs["num_items_in_batch"] = num_items_in_batch
        outputs = model(**inputs, output_hidden_states=True)
        own = outputs["loss"] if "loss" in outputs else None
        if own is None:
            raise ValueError(
                "the model returned no loss: RecoverabilityTrainer adds to the model's own loss, "
                "so batches need labels (e.g. DataCollatorForLanguageModeling)"
            )
        hidden = {
            layer: scale_gradient(outputs["hidden_states"][layer], self.lam) for layer in self.recoverability.layers
        }
        bags = self.recoverability.bags(bag_ids, mask)
        with warnings.catch_warnings():
            if self.lam == 0.0:  # the control detaches the hidden states on purpose: not a frozen model
                warnings.simplefilter("ignore", FrozenHiddenStatesWarning)
            per_layer = self.recoverability.layer_losses(hidden, mask, bags)
        term = self.recoverability.combine(per_layer)
        if model.training:
            self._record(own, term, per_layer, bags)
        # The term is a mean over this micro-batch's rows: its share of the step's mean.  The Trainer
        # divides what compute_loss returns by the accumulation steps unless the own loss is already
        # scaled for them; the term is scaled here in that case only, or (taken apart) always.
        steps = self.current_gradient_accumulation_steps
        share = 1.0 / steps if self._own_loss_is_scaled(num_items_in_batch) else 1.0
        if self._separate_clip and model.training and torch.is_grad_enabled():
            # The term's gradients now, apart; the Trainer back-propagates the own loss alone.
            self._term_backward(model, term / steps)
            loss = own + share * self.lam * term.detach()
        else:
            # Value: own + lambda * term.  Gradients: the probes get all of d term, the model lambda of
            # it (through scale_gradient above): the detached part removes (1 - lambda) * term's value only.
            loss = own + share * (term - (1.0 - self.lam) * term.detach())
        return (loss, outputs) if return_outputs else loss

    def _own_loss_is_scaled(self, num_items_in_batch) -> bool:
        """Whether the Trainer takes the returned loss as already scaled for gradient accumulation
        (its own rule, transformers.Trainer.training_step)."""
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def _term_backward(self, model, term: torch.Tensor) -> None:
        """d term into the probes' ``.grad`` and, for the model (lambda of it, through
        :func:`scale_gradient`), into ``self._term_grads``, clipped on its own at the optimizer step.
        ``torch.autograd.grad`` leaves the model's ``.grad`` (and DDP's hooks) alone."""
        model_params = [p for p in model.parameters() if p.requires_grad]
        probe_params = [p for p in self.recoverability.parameters() if p.requires_grad]
        grads = torch.autograd.grad(term, model_params + probe_params, retain_graph=True, allow_unused=True)
        for p, g in zip(probe_params, grads[len(model_params) :]):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        for p, g in zip(model_params, grads[: len(model_params)]):
            if g is not None:
                held = self._term_grads.get(p)
                self._term_grads[p] = g if held is None else held + g

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The probes live outside the DDP-wrapped model, so DDP does not average their gradients.
        average_gradients(self.recoverability.parameters())
        return loss

    # ---- clipping: each term on its own ------------------------------------------------------
    def _clip_grad_norm(self, model):
        """The Trainer's clip, per term: the own loss's gradient (in ``.grad``) and lambda * d term's
        (``self._term_grads``) each to ``max_grad_norm``, then summed.  Returns the own loss's norm
        (the logged ``grad_norm``); the term's is logged as ``recoverability_grad_norm``."""
        own_norm = super()._clip_grad_norm(model)
        if not self._separate_clip:
            return own_norm
        held, self._term_grads = self._term_grads, {}
        params, grads = list(held), list(held.values())
        # Each rank's term gradient, averaged as DDP averages the own loss's (no-op for one process).
        average_gradients([SimpleNamespace(grad=g) for g in grads])
        norm = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            if grads
            else None
        )
        if norm is not None:
            coef = torch.clamp(self.args.max_grad_norm / (norm + 1e-6), max=1.0)
            for p, g in zip(params, grads):
                g = (g * coef).to(p.dtype)
                p.grad = g if p.grad is None else p.grad + g
        self._window.setdefault("term_grad_norm", []).append(float(norm) if norm is not None else 0.0)
        return own_norm

    # ---- optimizer ---------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if not getattr(self, "_probe_group_added", False):
            optimizer.add_param_group(
                {"params": list(self.recoverability.parameters()), "lr": self.probe_lr, "weight_decay": 0.0}
            )
            self._probe_group_added = True
        return optimizer

    # ---- logs --------------------------------------------------------------------------------
    def _record(self, own, term, per_layer, bags) -> None:
        self.marginal.update(bags)
        values = {"own_loss": own, "recoverability": term}
        values.update({f"ce/{layer}": ce for layer, ce in per_layer.items()})
        for key, value in values.items():
            self._window.setdefault(key, []).append(float(value.detach()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._window:
            window, self._window = self._window, {}
            mean = {key: sum(v) / len(v) for key, v in window.items()}
            entropy = self.marginal.entropy_bits()
            logs["own_loss"] = round(mean["own_loss"], 4)
            logs["recoverability"] = round(mean["recoverability"], 4)
            logs["entropy_bits"] = round(entropy, 4)
            if "term_grad_norm" in mean:
                logs["recoverability_grad_norm"] = round(mean["term_grad_norm"], 4)
            for layer in self.recoverability.layers:
                ce_bits = mean[f"ce/{layer}"] / math.log(2)
                logs[f"recoverability_ce_bits/layer_{layer}"] = round(ce_bits, 4)
                logs[f"variational_bound_bits/layer_{layer}"] = round(entropy - ce_bits, 4)
        super().log(logs, start_time)

    # ---- the probes in checkpoints -----------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_probe(self.recoverability, output_dir or self.args.output_dir, lam=self.lam)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if (Path(resume_from_checkpoint) / PROBE_WEIGHTS).is_file():
            load_probe_state(self.recoverability, resume_from_checkpoint)


def save_probe(recoverability: MultiLayerRecoverabilityLoss, directory: str | os.PathLike, **extra: Any) -> Path:
    """The probes' tensors (safetensors) and their settings (JSON) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in recoverability.state_dict().items()}
    first = recoverability.probes[str(recoverability.layers[0])]
    config = {
        "layers": recoverability.layers,
        "layer_weights": recoverability.layer_weights.tolist(),
        "hidden_size": first.hidden_size,
        "vocab_size": first.vocab_size,
        "pooling": first.pooling,
        "exclude_ids": first.exclude_ids,
        "bias": first.bias is not None,
        "normalize": first.normalize,
        **extra,
    }
    atomic_write_bytes(directory / PROBE_WEIGHTS, safetensors_bytes(tensors))
    atomic_write_text(directory / PROBE_CONFIG, json.dumps(config, indent=2))
    return directory / PROBE_WEIGHTS


def load_probe_state(recoverability: MultiLayerRecoverabilityLoss, directory: str | os.PathLike) -> None:
    state = load_file(str(Path(directory) / PROBE_WEIGHTS))
    recoverability.load_state_dict(state)


def load_probe(directory: str | os.PathLike) -> MultiLayerRecoverabilityLoss:
    """The probes saved by :func:`save_probe` (or a RecoverabilityTrainer checkpoint)."""
    config = json.loads((Path(directory) / PROBE_CONFIG).read_text())
    probe = MultiLayerRecoverabilityLoss(
        config["hidden_size"],
        config["vocab_size"],
        config["layers"],
        config["layer_weights"],
        config["pooling"],
        config["exclude_ids"],
        config["bias"],
        config.get("normalize", False),  # probes saved before the option existed saw raw states
    )
    load_probe_state(probe, directory)
    return probe
