"""What :func:`fastmi.extract` is given, made concrete: layers, corpus, model, and the cache metadata.

Specs (a layer string, a corpus path, a model name) become the objects extraction works on, and the
metadata that identifies the cache they fill is read off them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch

from fastmi import __version__
from fastmi.data.corpus import Corpus

__all__ = ["parse_layers", "as_corpus", "as_loaded_model", "cache_metadata"]


def parse_layers(layers: str | int | Sequence[int], num_layers: int) -> list[int]:
    """ "all" -> [0..L]; "last" -> [L]; "0,3,6"; "2-5" (inclusive); "0,2-4"; ints (negative: from L)."""
    L = num_layers
    if isinstance(layers, str):
        text = layers.strip().lower()
        if text == "all":
            return list(range(L + 1))
        if text == "last":
            return [L]
        values: list[int] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(\d+))?", part)
            if m is None:
                raise ValueError(f"cannot read layers {layers!r}: expected 'all', 'last', '0,3,6' or '2-5'")
            lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
            if m.group(2) is not None and hi < lo:
                raise ValueError(f"empty layer range {part!r} in {layers!r}")
            values.extend(range(lo, hi + 1))
    elif isinstance(layers, int) and not isinstance(layers, bool):
        values = [layers]
    else:
        values = [int(v) for v in layers]
    resolved = sorted({v + L + 1 if v < 0 else v for v in values})
    bad = [v for v in values if not -(L + 1) <= v <= L]
    if bad or not resolved:
        raise ValueError(
            f"layers {bad or layers!r} out of range: this model has layers 0..{L} "
            "(0 = embedding output, negative counts from the last)"
        )
    return resolved


def as_corpus(corpus) -> Corpus:
    """A :class:`fastmi.Corpus` from itself, a list of sentences or a spec for :meth:`Corpus.load`."""
    if isinstance(corpus, Corpus):
        return corpus
    if isinstance(corpus, (str, os.PathLike)):
        return Corpus.load(corpus)
    if isinstance(corpus, Sequence):
        return Corpus.from_sentences(list(corpus))
    raise TypeError(
        f"corpus must be a fastmi.Corpus, a list of sentences or a corpus spec, not {type(corpus).__name__}"
    )


def as_loaded_model(model, device, dtype, progress: bool = True):
    """A :class:`fastmi.models.loading.LoadedModel`: loaded from a spec (on CPU unless ``device``), or
    the one given, which must already be on ``device`` in ``dtype`` if those are given."""
    from fastmi.models.loading import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        want_device = torch.device(device) if device is not None else None
        want_dtype = _torch_dtype(dtype) if dtype is not None else None
        if (want_device is not None and torch.device(model.device) != want_device) or (
            want_dtype is not None and model.dtype != want_dtype
        ):
            raise ValueError(
                f"the model is loaded on {model.device} in {model.dtype}; pass device/dtype to "
                "load_model (or pass the model spec to extract) to change them"
            )
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device=device if device is not None else "cpu", dtype=dtype, progress=progress)
    raise TypeError(f"model must be a LoadedModel or a model spec, not {type(model).__name__}")


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def cache_metadata(loaded, corpus: Corpus, pooling, max_length, batch_size, side, sources) -> dict:
    """What the cache records about its model, corpus and settings (the identity and the rest)."""
    return {
        "model": loaded.name,
        "revision": loaded.revision,
        "architecture": loaded.architecture,
        "kind": loaded.kind,
        "num_layers": loaded.num_layers,
        "hidden_size": loaded.hidden_size,
        "vocab_size": loaded.vocab_size,
        "excluded_ids": sorted(int(i) for i in loaded.special_ids),
        "pooling": pooling,
        "max_length": max_length,
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "corpus_name": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "num_rows": len(corpus),
        "fastmi_version": __version__,
        "batch_size": batch_size,
        "padding_side": side,
        "layer_sources": list(sources),
    }
