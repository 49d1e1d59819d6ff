"""What the probe reads, in one shape: an :class:`fastmi.ActivationCache` or a ``{layer: Tensor[N, d]}``
dict becomes a :class:`ProbeSource`, whose layers are loaded one group at a time and checked as they load."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fastmi.data.bags import BagTargets
from fastmi.models.loading import short_model_name

__all__ = ["ProbeSource", "load_layer", "default_max_memory"]


@dataclass
class ProbeSource:
    """What the probe needs from a cache or from raw tensors, in one shape."""

    layers: list[int]
    load: Callable[[int], torch.Tensor]  # layer -> [N, d]
    targets: BagTargets  # vocabulary ids, one row per sentence
    vocab_size: int
    num_layers: int  # depth used for rel_depth = layer / num_layers
    excluded_ids: list[int] = field(default_factory=list)
    model: str = "embeddings"
    revision: str | None = None
    pooling: str | None = None
    corpus_fingerprint: str | None = None
    metadata: dict = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        source: Any,
        targets: BagTargets | None = None,
        vocab_size: int | None = None,
        model: str | None = None,
        excluded_ids: Sequence[int] = (),
        layers: Sequence[int] | None = None,
    ) -> ProbeSource:
        """An ActivationCache, or a ``{layer: Tensor[N, d]}`` dict with its ``targets`` and ``vocab_size``."""
        if isinstance(source, Mapping):
            return cls.from_tensors(
                source, targets, vocab_size, model=model or "embeddings", excluded_ids=excluded_ids, layers=layers
            )
        if targets is not None or vocab_size is not None:
            raise ValueError("targets and vocab_size are read from the cache; pass them only with raw embeddings")
        probe_source = cls.from_cache(source, layers=layers)
        if model:
            probe_source.model = model
        return probe_source

    @classmethod
    def from_cache(cls, cache: Any, layers: Sequence[int] | None = None) -> ProbeSource:
        meta = dict(cache.metadata)
        available = list(cache.layers)
        chosen = _choose_layers(available, layers)
        return cls(
            layers=chosen,
            load=cache.embeddings,
            targets=cache.targets,
            vocab_size=int(meta["vocab_size"]),
            num_layers=int(meta.get("num_layers") or max(available) or 1),
            excluded_ids=[int(i) for i in meta.get("excluded_ids", [])],
            # the short name, as a sweep gives it: the path says where the model lies, not which it is
            model=short_model_name(meta.get("model", "model")),
            revision=meta.get("revision"),
            pooling=meta.get("pooling"),
            corpus_fingerprint=meta.get("corpus_fingerprint"),
            metadata=meta,
        )

    @classmethod
    def from_tensors(
        cls,
        embeddings: Mapping[Any, torch.Tensor],
        targets: BagTargets | None,
        vocab_size: int | None,
        model: str = "embeddings",
        excluded_ids: Sequence[int] = (),
        layers: Sequence[int] | None = None,
    ) -> ProbeSource:
        if targets is None or vocab_size is None:
            raise ValueError("raw embeddings need targets=BagTargets and vocab_size=M")
        if not embeddings:
            raise ValueError("no layers given: the embeddings dict is empty")
        tensors = {int(layer): torch.as_tensor(x) for layer, x in embeddings.items()}
        for layer, x in tensors.items():
            if x.dim() != 2:
                raise ValueError(f"layer {layer}: embeddings must be [N, d], got shape {tuple(x.shape)}")
        chosen = _choose_layers(sorted(tensors), layers)
        return cls(
            layers=chosen,
            load=tensors.__getitem__,
            targets=targets,
            vocab_size=int(vocab_size),
            num_layers=max(max(tensors), 1),
            excluded_ids=list(excluded_ids),
            model=model,
        )


def _choose_layers(available: Sequence[int], wanted: Sequence[int] | None) -> list[int]:
    if wanted is None:
        return list(available)
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise ValueError(f"layers {missing} are not available; the source has layers {list(available)}")
    return list(wanted)


def default_max_memory(device: torch.device) -> int:
    """Half of what is free now: the probe shares the machine with the extraction and the OS."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def load_layer(source: ProbeSource, layer: int, rows: int) -> torch.Tensor:
    x = torch.as_tensor(source.load(layer))
    if x.dim() != 2 or x.shape[0] != rows:
        raise ValueError(
            f"layer {layer} has {tuple(x.shape)} embeddings but there are {rows} target rows; "
            "every layer needs one row per sentence"
        )
    x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite.all(dim=1))[0])
        raise ValueError(f"layer {layer} has NaN or infinite embeddings (first at row {row})")
    return x
