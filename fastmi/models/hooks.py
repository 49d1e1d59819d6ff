"""Forward hooks that pool every requested layer while the forward pass runs.

Layer l is exactly ``hidden_states[l]`` of the same model called with ``output_hidden_states=True``
(transformers 5.x records those with hooks of its own, and these taps mirror them):

* layer 0: the input of the first block (the embedding output, after any embedding norm/dropout);
* layer l in 1..L-1: the output of block l-1;
* layer L: the model's ``last_hidden_state``.  For decoders with a final norm (GPT-2 ``ln_f``,
  Llama/Mistral/Qwen2 ``norm``) transformers puts the *normed* state there, so layer L is tapped
  at the output of that norm; for BERT-like encoders (no final norm) it is block L-1's output.

Each tap pools its [B, T, d] tensor at once with :func:`fastmi.kernels.masked_pool` on the block's
own device and keeps only the [B, d] result, so the hidden states of all layers are never held
together.  The tap of the deepest requested layer stops the forward (nothing after it runs).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from fastmi.kernels import masked_pool

__all__ = ["LayerTaps", "LayerPooler", "find_layer_taps", "hidden_states_pooled"]

# Names transformers uses for the norm that produces last_hidden_state, across families.
FINAL_NORM_NAMES = ("ln_f", "norm", "final_layernorm", "final_layer_norm", "final_norm", "norm_f", "ln_final")


class _StopForward(Exception):
    """Raised by the deepest tap: the remaining blocks (and any pooler) need not run."""


@dataclass(frozen=True)
class LayerTaps:
    """Where each layer's hidden state can be caught: the L blocks and the final norm, if any."""

    blocks: tuple[nn.Module, ...]
    final_norm: nn.Module | None
    sources: tuple[str, ...]  # per layer 0..L, a human-readable description (recorded in the cache)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)


def find_layer_taps(model: nn.Module, num_layers: int) -> LayerTaps:
    """Locate the blocks of a transformers base model, and the norm behind ``last_hidden_state``."""
    names = {id(m): n for n, m in model.named_modules()}
    blocks = _blocks_from_recorder(model, num_layers) or _blocks_from_module_list(model, num_layers)
    if not blocks:
        raise ValueError(
            f"cannot find the {num_layers} transformer blocks of {type(model).__name__}; "
            "fastmi supports transformers models whose blocks form one nn.ModuleList"
        )
    final_norm = None
    if getattr(getattr(model, "config", None), "tie_last_hidden_states", True) is not False:
        block_parent = names[id(blocks[0])].rsplit(".", 2)[0] if names[id(blocks[0])].count(".") >= 2 else ""
        parents = [model] + ([model.get_submodule(block_parent)] if block_parent else [])
        final_norm = next(
            (getattr(p, n) for p in parents for n in FINAL_NORM_NAMES if isinstance(getattr(p, n, None), nn.Module)),
            None,
        )
    sources = [f"input of {names[id(blocks[0])]}"]
    sources += [f"output of {names[id(b)]}" for b in blocks[:-1]]
    sources.append(
        f"output of {names[id(final_norm)]}" if final_norm is not None else f"output of {names[id(blocks[-1])]}"
    )
    return LayerTaps(tuple(blocks), final_norm, tuple(sources))


def _blocks_from_recorder(model: nn.Module, num_layers: int) -> list[nn.Module]:
    """The modules transformers itself hooks for ``hidden_states`` (``_can_record_outputs``)."""
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("hidden_states")
    target = getattr(spec, "target_class", spec)
    if not isinstance(target, type):
        return []
    blocks = [m for m in model.modules() if isinstance(m, target)]
    return blocks if len(blocks) == num_layers else []


def _blocks_from_module_list(model: nn.Module, num_layers: int) -> list[nn.Module]:
    """Fallback: the one ModuleList of ``num_layers`` same-class modules."""
    found = [
        list(m)
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) == num_layers and len({type(b) for b in m}) == 1
    ]
    return found[0] if len(found) == 1 else []


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class LayerPooler:
    """While entered, :meth:`run` returns ``{layer: pooled fp32 [B, d]}`` for the requested layers.

    Tensors stay on the device of the module that produced them; the caller moves them.
    """

    def __init__(self, model: nn.Module, taps: LayerTaps, layers: list[int], pooling: str) -> None:
        if not layers:
            raise ValueError("no layers requested")
        bad = [l for l in layers if not 0 <= l <= taps.num_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range 0..{taps.num_layers}")
        self.model, self.taps, self.layers, self.pooling = model, taps, sorted(set(layers)), pooling
        self.deepest = self.layers[-1]
        self._handles: list = []
        self._masks: dict[torch.device, torch.Tensor] = {}
        self._pooled: dict[int, torch.Tensor] = {}

    def __enter__(self) -> LayerPooler:
        blocks, L = self.taps.blocks, self.taps.num_layers
        for layer in self.layers:
            if layer == 0:
                handle = blocks[0].register_forward_pre_hook(self._pre_tap(layer), with_kwargs=True)
            else:
                module = (
                    self.taps.final_norm if (layer == L and self.taps.final_norm is not None) else blocks[layer - 1]
                )
                handle = module.register_forward_hook(self._tap(layer))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        if not self._handles:
            raise RuntimeError("LayerPooler.run() must be called inside `with LayerPooler(...)`")
        mask = inputs["attention_mask"]
        self._masks = {mask.device: mask}
        self._pooled = {}
        try:
            self.model(**inputs)
        except _StopForward:
            pass
        pooled, self._pooled, self._masks = self._pooled, {}, {}
        missing = [l for l in self.layers if l not in pooled]
        if missing:
            raise RuntimeError(f"the forward pass never reached layers {missing} (taps: {self.taps.sources})")
        return pooled

    def _mask_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._masks:  # a model split over devices: one copy of the mask per device
            self._masks[device] = next(iter(self._masks.values())).to(device)
        return self._masks[device]

    def _store(self, layer: int, hidden: torch.Tensor) -> None:
        self._pooled[layer] = masked_pool(hidden, self._mask_on(hidden.device), self.pooling)
        if layer == self.deepest:
            raise _StopForward

    def _pre_tap(self, layer: int):
        def hook(module, args, kwargs):
            self._store(layer, args[0] if args else kwargs["hidden_states"])

        return hook

    def _tap(self, layer: int):
        def hook(module, args, output):
            self._store(layer, _hidden(output))

        return hook


def forward_parameters(model: nn.Module) -> set[str]:
    """Names ``model.forward`` takes explicitly (position_ids, use_cache, ...)."""
    return set(inspect.signature(model.forward).parameters)


@torch.inference_mode()
def hidden_states_pooled(
    model: nn.Module, inputs: dict[str, torch.Tensor], layers: list[int], pooling: str
) -> dict[int, torch.Tensor]:
    """The reference the taps must reproduce: pool ``output_hidden_states=True`` of a plain forward."""
    out = model(**inputs, output_hidden_states=True)
    mask = inputs["attention_mask"]
    return {l: masked_pool(out.hidden_states[l], mask.to(out.hidden_states[l].device), pooling) for l in layers}
