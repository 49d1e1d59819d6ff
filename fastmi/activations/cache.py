"""The activation cache: one directory of safetensors shards per extraction identity.

Layout (shared/DESIGN.md section 6)::

    <dir>/manifest.json                      identity, metadata, finished units (the source of truth)
    <dir>/targets.safetensors                BagTargets (offsets, ids, counts), row_ids, lengths
    <dir>/layer_{l:03d}/shard_{s:05d}.safetensors   "embeddings" [rows, d] in the cache dtype, "row_ids" int64

Shard s holds corpus rows ``[s * shard_rows, min((s + 1) * shard_rows, num_rows))`` in corpus order.
Every file is written to a temporary name in its own folder, fsynced, then renamed; a unit (layer,
shard) is finished only once the manifest, itself replaced atomically, lists it with its size and
sha256.  A listed file whose size or checksum disagrees is never read: readers raise
:class:`CacheCorruptError`, and the next extraction reports it and redoes the unit.  No pickle.

Several processes may write one cache (``torchrun``, see docs/distributed.md): each writes only
its own units (rank 0 also the targets and the output embedding), and the manifest is read, merged
and replaced under a second lock (``.manifest.lock``), one writer at a time, so no finished unit
is ever lost.

This module writes a cache (:class:`CacheWriter`, every write through its ``atomic_write_bytes``);
:class:`ActivationCache` reads one (:mod:`~fastmi.activations.cache_reader`).  The parts:
:mod:`~fastmi.activations.shard_files` (one file, checked), :mod:`~fastmi.activations.manifest`
(layout, identity, manifest) and :mod:`~fastmi.activations.locks`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fastmi.activations.cache_reader import ActivationCache
from fastmi.activations.locks import RUN_LOCK, manifest_lock, run_lock
from fastmi.activations.manifest import (
    CACHE_DTYPES,
    FORMAT,
    IDENTITY_KEYS,
    INPUT_EMBEDDING,
    MANIFEST,
    TARGETS,
    UNEMBEDDING,
    default_cache_dir,
    format_layers,
    manifest_bytes,
    manifest_for_run,
    read_manifest,
    resolve_cache_dtype,
    shard_path,
)
from fastmi.activations.shard_files import CacheCorruptError, encode_safetensors
from fastmi.data.bags import BagTargets
from fastmi.runtime.files import TMP_PREFIX, atomic_write_bytes
from fastmi.runtime.notices import notice

# The public names, and those other modules and tests import from here: the tests that kill a run
# mid-write patch atomic_write_bytes here and name their half-written files with TMP_PREFIX.
__all__ = [
    "ActivationCache",
    "CacheWriter",
    "CacheCorruptError",
    "IDENTITY_KEYS",
    "default_cache_dir",
    "resolve_cache_dtype",
    "format_layers",
    "encode_safetensors",
    "TMP_PREFIX",
]


class CacheWriter(ActivationCache):
    """The writing side, used by :func:`fastmi.extract`; holds an exclusive lock on the directory."""

    @classmethod
    def attach(cls, directory: str | os.PathLike) -> CacheWriter:
        """Join a cache another process of the same run has prepared (and holds the run lock of).

        Used by ranks other than 0 of a multi-process extraction: they write their own units and
        add them to the manifest under the manifest lock; they never change anything else.
        """
        writer = cls(Path(directory), read_manifest(Path(directory)) or {})
        if not writer._manifest:
            raise FileNotFoundError(f"no fastmi activation cache at {directory} (no {MANIFEST})")
        writer._lock = None
        return writer

    @classmethod
    def prepare(
        cls, directory: str | os.PathLike, metadata: dict, shard_rows: int, resume: bool = True, overwrite: bool = False
    ) -> CacheWriter:
        """Open ``directory`` for ``metadata``: start it, continue it, or refuse it with the reason."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"cache directory {directory} exists and is not a directory")
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        lock_path = directory / RUN_LOCK
        created_lock = not lock_path.exists()
        lock = run_lock(directory)
        try:
            manifest = manifest_for_run(directory, metadata, shard_rows, resume, overwrite)
            writer = cls(directory, manifest)
            writer._lock = lock
            writer._commit()
            return writer
        except BaseException:
            lock.release()
            if created_lock:  # a refused run leaves nothing behind
                lock_path.unlink(missing_ok=True)
                if created:
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            raise

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _commit(self) -> None:
        with manifest_lock(self.directory):
            atomic_write_bytes(self.directory / MANIFEST, manifest_bytes(self._manifest))

    def _commit_units(self, finished: Mapping[int, Mapping[int, list]]) -> None:
        """Add ``{layer: {shard: [bytes, sha256]}}`` to the manifest on disk."""

        def add(manifest: dict) -> None:
            for layer, shards in finished.items():
                for shard, entry in shards.items():
                    manifest["units"].setdefault(str(layer), {})[str(shard)] = entry

        self._merge_into_manifest(add)

    def _commit_fields(self, **fields) -> None:
        """Set top-level manifest entries (targets, unembedding) in the manifest on disk."""
        self._merge_into_manifest(lambda manifest: manifest.update(fields))

    def _merge_into_manifest(self, change) -> None:
        """Change the manifest on disk, which other processes may have extended since we read it:
        read, change and replace it under the manifest lock."""
        with manifest_lock(self.directory):
            manifest = read_manifest(self.directory) or self._manifest
            change(manifest)
            atomic_write_bytes(self.directory / MANIFEST, manifest_bytes(manifest))
            self._manifest = manifest

    def _header(self) -> dict:
        return {"format": FORMAT, **self.identity}

    # ---- targets ----------------------------------------------------------------------------------
    def targets_ok(self) -> bool:
        try:
            self._read_targets()
            return True
        except CacheCorruptError as err:
            if self._manifest.get("targets") is not None:
                notice(f"{err}; rewriting the targets")
            return False

    def write_targets(self, targets: BagTargets, lengths: torch.Tensor) -> None:
        tensors = targets.to("cpu").to_dict() | {
            "row_ids": torch.arange(targets.num_rows, dtype=torch.long),
            "lengths": lengths.long().contiguous(),
        }
        data, checksum = encode_safetensors(tensors, self._header())
        atomic_write_bytes(self.directory / TARGETS, data)
        self._commit_fields(targets=[len(data), checksum])

    # ---- output embedding ---------------------------------------------------------------------------
    def unembedding_ok(self) -> bool:
        """Whether the output embedding is stored and intact (or known to be unavailable)."""
        entry = self._manifest.get("unembedding")
        if entry and "missing" in entry:
            return True
        try:
            self.unembedding(torch.zeros(0, dtype=torch.long))
            return True
        except (CacheCorruptError, ValueError) as err:
            if entry is not None:
                notice(f"{err}; rewriting the output embedding")
            return False

    def write_unembedding(self, weight: torch.Tensor | None, bias: torch.Tensor | None, source: str) -> None:
        """Store U (fp32 [V, d]) and the output bias once; ``weight=None`` records why there is none."""
        if weight is None:
            self._commit_fields(unembedding={"missing": source})
            return
        tensors = {"weight": weight.float().contiguous()}
        if bias is not None:
            tensors["bias"] = bias.float().contiguous()
        data, checksum = encode_safetensors(tensors, self._header() | {"source": source})
        atomic_write_bytes(self.directory / UNEMBEDDING, data)
        self._commit_fields(unembedding={"bytes": len(data), "sha256": checksum, "source": source})

    def input_embedding_ok(self) -> bool:
        """Whether the input embedding is stored and intact, or recorded as the output one (tied)."""
        entry = self._manifest.get("input_embedding")
        if entry and "sha256" not in entry:
            return True
        try:
            return self.input_embedding(torch.zeros(0, dtype=torch.long)) is not None
        except CacheCorruptError as err:
            notice(f"{err}; rewriting the input embedding")
            return False

    def write_input_embedding(self, weight: torch.Tensor | None, source: str) -> None:
        """Store E (fp32 [V, d]) once, or, with ``weight=None``, why the cache holds no E of its own."""
        if weight is None:
            self._commit_fields(input_embedding={"none": source})
            return
        data, checksum = encode_safetensors(
            {"weight": weight.float().contiguous()}, self._header() | {"source": source}
        )
        atomic_write_bytes(self.directory / INPUT_EMBEDDING, data)
        self._commit_fields(input_embedding={"bytes": len(data), "sha256": checksum, "source": source})

    # ---- shards -----------------------------------------------------------------------------------
    def drop_bad_units(self) -> list[tuple[int, int, str]]:
        """Verify every finished unit; unlist (so they are redone) and report the bad ones."""
        bad = self.verify()
        for layer, shard, reason in bad:
            notice(f"{reason}; redoing layer {layer} shard {shard}")
            del self._manifest["units"][str(layer)][str(shard)]
        if bad:
            self._commit()
        return bad

    def missing_layers(self, shard: int, layers: list[int]) -> list[int]:
        return [l for l in layers if str(shard) not in self._manifest["units"].get(str(l), {})]

    def write_shard(self, shard: int, pooled: Mapping[int, np.ndarray]) -> None:
        """Write one shard of each layer in ``pooled`` (fp32 [rows, d], corpus order), then list them.

        Values are stored in the cache dtype (rounded to nearest); a value beyond its range is
        refused (fp16 overflows at 65504) and nothing of the shard is listed.
        """
        start, stop = self.shard_range(shard)
        row_ids = torch.arange(start, stop, dtype=torch.long)
        stored_dtype = CACHE_DTYPES[self.cache_dtype]
        finished = {}
        for layer, values in pooled.items():
            if values.shape != (stop - start, self.hidden_size):
                raise ValueError(
                    f"layer {layer} shard {shard}: expected shape {(stop - start, self.hidden_size)}, "
                    f"got {values.shape}"
                )
            stored = torch.from_numpy(values).to(stored_dtype)
            if stored_dtype != torch.float32 and not bool(torch.isfinite(stored).all()):
                raise ValueError(
                    f"layer {layer} shard {shard}: pooled values exceed the range of {self.cache_dtype} "
                    f"(largest magnitude {float(np.abs(values).max()):.4g}); use cache_dtype bf16 or fp32"
                )
            header = self._header() | {"layer": layer, "shard": shard, "row_start": start, "rows": stop - start}
            data, checksum = encode_safetensors({"embeddings": stored, "row_ids": row_ids}, header)
            atomic_write_bytes(shard_path(self.directory, layer, shard), data)
            finished[layer] = [len(data), checksum]
        # Only now are the units finished: one manifest write per shard, not per file.
        self._commit_units({layer: {shard: entry} for layer, entry in finished.items()})
