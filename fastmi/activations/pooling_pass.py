"""One extraction pass: the batches of a shard through the model, every requested layer pooled.

The forward is tapped by :class:`fastmi.models.hooks.LayerPooler`; the pooled rows come back to host
memory in fp32, checked to be finite, and are put back in corpus order.  Before the first shard the
taps are checked once against ``output_hidden_states=True`` on a few real sentences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fastmi.activations.batching import batches_by_length, collate
from fastmi.models.hooks import LayerPooler, forward_parameters, hidden_states_pooled
from fastmi.models.placement import input_device

__all__ = ["PoolingPass", "NonFiniteActivationError"]

VERIFY_ROWS = 4  # sentences on which the taps are checked against output_hidden_states


class NonFiniteActivationError(RuntimeError):
    """A pooled embedding came out NaN or infinite (overflow in fp16, a broken checkpoint, ...)."""


@dataclass
class PoolingPass:
    """One extraction pass over a model and the tokenized corpus."""

    loaded: object
    taps: object
    token_lists: list[list[int]]
    lengths: np.ndarray
    pooling: str
    side: str
    batch_size: int

    def __post_init__(self) -> None:
        model = self.loaded.model
        self.parameters = forward_parameters(model)
        self.input_device = input_device(model)  # not the weight's: accelerate may have offloaded it
        pad = self.loaded.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0  # masked out anyway

    def inputs(self, rows: Sequence[int]) -> dict:
        return collate([self.token_lists[r] for r in rows], self.pad_id, self.side, self.input_device, self.parameters)

    @torch.inference_mode()
    def shard(
        self, row_range: tuple[int, int], layers: list[int], shard: int, on_batch: Callable[[int], None] | None = None
    ) -> dict[int, np.ndarray]:
        """fp32 [rows, d] per layer for corpus rows ``row_range``, in corpus order; ``on_batch(rows)``
        after each batch (a shard of a large model takes minutes)."""
        start, stop = row_range
        out = {l: np.zeros((stop - start, self.loaded.hidden_size), dtype=np.float32) for l in layers}
        with LayerPooler(self.loaded.model, self.taps, layers, self.pooling) as pooler:
            for b, positions in enumerate(batches_by_length(self.lengths[start:stop], self.batch_size)):
                rows = positions + start
                pooled = _to_host(pooler.run(self.inputs(rows)), layers)
                for layer in layers:
                    _check_finite(pooled[layer], layer, shard, b, rows)
                    out[layer][positions] = pooled[layer]
                if on_batch is not None:
                    on_batch(len(rows))
        return out

    def verify_taps(self, layers: list[int]) -> None:
        """The taps must reproduce ``output_hidden_states=True`` on a few real sentences."""
        rows = np.flatnonzero(self.lengths > 0)[:VERIFY_ROWS]
        if rows.size == 0:
            return
        inputs = self.inputs(rows)
        with torch.inference_mode(), LayerPooler(self.loaded.model, self.taps, layers, self.pooling) as pooler:
            tapped = pooler.run(inputs)
        expected = hidden_states_pooled(self.loaded.model, inputs, layers, self.pooling)
        for layer in layers:
            got, want = tapped[layer].float().cpu(), expected[layer].float().cpu()
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True):
                raise RuntimeError(
                    f"the hook for layer {layer} ({self.taps.sources[layer]}) does not reproduce "
                    f"hidden_states[{layer}] "
                    f"of {self.loaded.architecture} (max difference {float((got - want).abs().max()):.3g}); "
                    "this architecture needs its own layer taps in fastmi.models.hooks"
                )


def _to_host(pooled: dict[int, torch.Tensor], layers: list[int]) -> dict[int, np.ndarray]:
    """fp32 numpy copies, one device-to-host transfer per device (not one per layer)."""
    host: dict[int, np.ndarray] = {}
    by_device: dict[torch.device, list[int]] = {}
    for layer in layers:
        by_device.setdefault(pooled[layer].device, []).append(layer)
    for group in by_device.values():
        stacked = torch.stack([pooled[l] for l in group]).float().cpu().numpy()
        host.update(zip(group, stacked))
    return host


def _check_finite(values: np.ndarray, layer: int, shard: int, batch: int, rows: np.ndarray) -> None:
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = rows[~finite]
        shown = ", ".join(map(str, bad[:8])) + (", ..." if bad.size > 8 else "")
        raise NonFiniteActivationError(
            f"layer {layer}: non-finite pooled values in batch {batch} of shard {shard} "
            f"(corpus rows {shown}); nothing of this shard was written. Try dtype=float32 if the model runs in "
            "float16, or check the checkpoint"
        )
