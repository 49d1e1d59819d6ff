"""Reading an activation cache: :class:`ActivationCache` (layout and guarantees: :mod:`fastmi.activations.cache`,
which also re-exports it).  Every file is checked against the manifest before its data is used."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fastmi.activations.manifest import (
    IDENTITY_KEYS,
    INPUT_EMBEDDING,
    MANIFEST,
    TARGETS,
    UNEMBEDDING,
    format_layers,
    metadata_value,
    read_manifest,
    shard_path,
)
from fastmi.activations.shard_files import CacheCorruptError, read_safetensors
from fastmi.data.bags import BagTargets

__all__ = ["ActivationCache"]


class ActivationCache:
    """Pooled per-layer sentence embeddings and bag-of-tokens targets of one corpus under one model.

    Open an existing cache with :meth:`open`; :func:`fastmi.extract` builds them.  Reads are
    memory-mapped and every file is checked against the manifest before its data is used.
    """

    def __init__(self, directory: str | os.PathLike, manifest: dict) -> None:
        self.directory = Path(directory)
        self._manifest = manifest

    # ---- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike) -> ActivationCache:
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest is None:
            raise FileNotFoundError(f"no fastmi activation cache at {directory} (no {MANIFEST})")
        return cls(directory, manifest)

    # ---- description ----------------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """Model, corpus and extraction settings (a copy): see IDENTITY_KEYS for what must match."""
        return dict(self._manifest["metadata"])

    @property
    def identity(self) -> dict:
        return {k: metadata_value(self._manifest["metadata"], k) for k in IDENTITY_KEYS}

    @property
    def cache_dtype(self) -> str:
        """How the embeddings are stored: "float32", "bfloat16" or "float16"."""
        return metadata_value(self._manifest["metadata"], "cache_dtype")

    @property
    def num_rows(self) -> int:
        return int(self._manifest["metadata"]["num_rows"])

    @property
    def hidden_size(self) -> int:
        return int(self._manifest["metadata"]["hidden_size"])

    @property
    def shard_rows(self) -> int:
        return int(self._manifest["shard_rows"])

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_rows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Corpus rows ``[start, stop)`` of ``shard``."""
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.num_rows)

    def layer_units(self, layer: int) -> dict[str, list]:
        """``{shard: [bytes, sha256]}`` of a layer: what its data is (for results derived from it)."""
        return dict(self._manifest["units"].get(str(layer), {}))

    def finished_shards(self, layer: int) -> set[int]:
        return {int(s) for s in self._manifest["units"].get(str(layer), {})}

    @property
    def layers(self) -> list[int]:
        """Layers whose every shard is finished, ascending (0 = embedding output)."""
        every = set(range(self.num_shards))
        return sorted(int(l) for l, shards in self._manifest["units"].items() if every <= {int(s) for s in shards})

    def __repr__(self) -> str:
        m = self._manifest["metadata"]
        return (
            f"ActivationCache({str(self.directory)!r}, model={m['model']!r}, corpus={m['corpus_name']!r}, "
            f"rows={self.num_rows}, layers={format_layers(self.layers)}, pooling={m['pooling']!r})"
        )

    # ---- reading --------------------------------------------------------------------------------
    def embeddings(self, layer: int) -> torch.Tensor:
        """fp32 [num_rows, d]: row i is corpus sentence i (empty sentences pool to zeros).

        Each shard is memory-mapped, checked (size, header and data sha256 against the manifest)
        and copied once into the result (widened to fp32 if the cache stores bf16 or fp16), so
        only this layer is ever in memory.  A mismatch raises CacheCorruptError naming the file.
        """
        if layer not in self.layers:
            raise KeyError(
                f"layer {layer} is not (fully) in the cache at {self.directory}; "
                f"finished layers: {format_layers(self.layers) or 'none'}"
            )
        out = torch.empty(self.num_rows, self.hidden_size, dtype=torch.float32)
        for shard in range(self.num_shards):
            start, stop = self.shard_range(shard)
            tensors = self._read_unit(layer, shard)
            if not np.array_equal(tensors["row_ids"], np.arange(start, stop)):
                raise CacheCorruptError(
                    f"{shard_path(self.directory, layer, shard)} holds rows other than [{start}, {stop})"
                )
            stored = tensors["embeddings"]
            if self.cache_dtype == "bfloat16":  # raw 16-bit words: a bf16 is the top half of its fp32
                out[start:stop].numpy().view(np.uint32)[...] = stored.astype(np.uint32) << 16
            else:
                out[start:stop].numpy()[...] = stored  # the one copy: mmap -> result
        return out

    def _read_unit(self, layer: int, shard: int) -> dict[str, np.ndarray]:
        nbytes, checksum = self._manifest["units"][str(layer)][str(shard)]
        tensors, _ = read_safetensors(shard_path(self.directory, layer, shard), nbytes, checksum)
        return tensors

    @property
    def targets(self) -> BagTargets:
        """The bags of tokens (special tokens excluded), one row per corpus sentence."""
        t = self._read_targets()
        return BagTargets(
            torch.from_numpy(t["offsets"].copy()),
            torch.from_numpy(t["ids"].copy()),
            torch.from_numpy(t["counts"].copy()),
        )

    @property
    def lengths(self) -> torch.Tensor:
        """int64 [num_rows]: tokens per sentence as the model saw them (special tokens included)."""
        return torch.from_numpy(self._read_targets()["lengths"].copy())

    def _read_targets(self) -> dict[str, np.ndarray]:
        entry = self._manifest.get("targets")
        if entry is None:
            raise CacheCorruptError(f"the cache at {self.directory} has no targets yet (extraction never got that far)")
        tensors, _ = read_safetensors(self.directory / TARGETS, *entry)
        return tensors

    def unembedding(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """The model's output embedding: (U fp32 [V, d] or its ``rows``, output bias or None, its source).

        Stored once per cache by extraction (fastmi.models.unembedding); checked like every file.  A cache
        made before fastmi stored it raises MissingUnembeddingError.
        """
        from fastmi.models.unembedding import MissingUnembeddingError

        entry = self._manifest.get("unembedding")
        if not entry or "sha256" not in entry:
            why = (entry or {}).get("missing") or "the cache was made before fastmi stored it"
            raise MissingUnembeddingError(
                f"the cache at {self.directory} holds no output embedding ({why}); probe='unembedding' and "
                "'embedding' need it. Use probe='linear' (--probe linear), or run fastmi extract on this cache "
                "again (it resumes, adding only the output embedding)"
            )
        tensors, header = read_safetensors(self.directory / UNEMBEDDING, entry["bytes"], entry["sha256"])
        pick = (lambda a: a) if rows is None else (lambda a: a[rows.cpu().numpy()])
        bias = torch.from_numpy(pick(tensors["bias"]).copy()) if "bias" in tensors else None
        return torch.from_numpy(pick(tensors["weight"]).copy()), bias, str(header.get("source", ""))

    def input_embedding(self, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """The model's input embedding E (fp32 [V, d], or its ``rows``) where it is not the output
        embedding; None where it is (tied weights) or the cache was made before fastmi stored it."""
        entry = self._manifest.get("input_embedding")
        if not entry or "sha256" not in entry:
            return None
        tensors, _ = read_safetensors(self.directory / INPUT_EMBEDDING, entry["bytes"], entry["sha256"])
        weight = tensors["weight"] if rows is None else tensors["weight"][rows.cpu().numpy()]
        return torch.from_numpy(weight.copy())

    def verify(self) -> list[tuple[int, int, str]]:
        """Check every finished unit; return ``(layer, shard, reason)`` for each bad one."""
        bad = []
        for layer, shard in self.units():
            try:
                self._read_unit(layer, shard)
            except CacheCorruptError as err:
                bad.append((layer, shard, str(err)))
        return bad

    def units(self) -> Iterator[tuple[int, int]]:
        for layer, shards in sorted(self._manifest["units"].items(), key=lambda kv: int(kv[0])):
            for shard in sorted(int(s) for s in shards):
                yield int(layer), shard
