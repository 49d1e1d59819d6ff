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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from fastmi.data.bags import BagTargets
from fastmi.runtime.notices import notice

__all__ = ["ActivationCache", "CacheCorruptError", "IDENTITY_KEYS", "default_cache_dir"]

FORMAT = "fastmi-activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TARGETS = "targets.safetensors"
UNEMBEDDING = "unembedding.safetensors"  # the model's output embedding, for probe="unembedding"
# Two caches answer the same question only if all of these agree; anything else (device, batch
# size) changes results by rounding at most and is recorded, not enforced.
IDENTITY_KEYS = ("model", "revision", "dtype", "pooling", "max_length", "corpus_fingerprint", "cache_dtype")
# How the pooled embeddings are stored.  Caches made before the setting existed are fp32.
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"} | {k: k for k in CACHE_DTYPES}
DEFAULT_CACHE_DTYPE = "float32"
_TMP_PREFIX = ".tmp-"
HEADER_KEY = "fastmi"
# bfloat16 has no numpy dtype: its raw 16-bit words are read as uint16 and widened by torch.
_ST_DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16, "BF16": np.uint16}


class CacheCorruptError(RuntimeError):
    """A cache file does not match what the manifest recorded for it (truncated, edited, lost)."""


def resolve_cache_dtype(name: str | torch.dtype | None) -> str:
    """ "fp32" | "bf16" | "fp16" (or the long names, or a torch dtype) -> "float32" | "bfloat16" | "float16"."""
    if name is None:
        return DEFAULT_CACHE_DTYPE
    text = str(name).removeprefix("torch.")
    if text not in _CACHE_DTYPE_NAMES:
        raise ValueError(f"cache dtype must be one of fp32, bf16, fp16, got {name!r}")
    return _CACHE_DTYPE_NAMES[text]


def _hashed_identity(identity: Mapping[str, object]) -> dict:
    # An fp32 cache keeps the directory name it had before cache_dtype was part of the identity.
    hashed = {k: identity.get(k) for k in IDENTITY_KEYS}
    if hashed["cache_dtype"] in (None, DEFAULT_CACHE_DTYPE):
        del hashed["cache_dtype"]
    return hashed


def default_cache_dir(identity: Mapping[str, object], model_name: str) -> Path:
    """``<fastmi home>/activations/<model-slug>-<12 hex of the identity>`` (see :mod:`fastmi.runtime.paths`)."""
    from fastmi.runtime.paths import activations_home

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(model_name)).name or str(model_name)).strip("-") or "model"
    digest = hashlib.sha256(json.dumps(_hashed_identity(identity), sort_keys=True).encode()).hexdigest()
    return activations_home() / f"{slug}-{digest[:12]}"


def layer_dir(directory: Path, layer: int) -> Path:
    return directory / f"layer_{layer:03d}"


def shard_path(directory: Path, layer: int, shard: int) -> Path:
    return layer_dir(directory, layer) / f"shard_{shard:05d}.safetensors"


# ---- files --------------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        # A full disk or Ctrl-C mid-write: drop the partial file now (it holds space), and name the
        # file in the error (a failed write() does not).
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)
        raise
    _fsync_dir(path.parent)  # the rename itself must survive a power cut


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems (and Windows) cannot fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 of the raw bytes of each tensor, in name order (independent of the file layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(memoryview(np.ascontiguousarray(tensors[name])).cast("B"))
    return h.hexdigest()


def _raw(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view of the tensor's bytes (bfloat16 as its 16-bit words)."""
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def encode_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> tuple[bytes, str]:
    """The file bytes of ``tensors``, with ``metadata`` and their checksum in the header.

    The metadata travels as one canonical JSON string under the key "fastmi": safetensors keeps
    header metadata in a hash map whose order changes between processes, and the files of a
    resumed run must be byte-identical to those of an uninterrupted one.
    """
    checksum = tensors_sha256({k: _raw(v) for k, v in tensors.items()})
    header = json.dumps(dict(metadata) | {"sha256": checksum}, sort_keys=True, separators=(",", ":"))
    return safetensors_bytes(dict(tensors), {HEADER_KEY: header}), checksum


def read_safetensors(path: Path, expected_bytes: int, expected_sha256: str) -> tuple[dict[str, np.ndarray], dict]:
    """Memory-map a safetensors file and return its tensors (read-only views) and header metadata.

    Refuses (CacheCorruptError) unless the size, the header checksum and the data all match.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CacheCorruptError(f"{path} is missing") from None
    if size != expected_bytes:
        raise CacheCorruptError(f"{path} has {size} bytes, the manifest recorded {expected_bytes} (truncated?)")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise CacheCorruptError(f"{path} has an unreadable header") from None
    try:
        metadata = json.loads((header.pop("__metadata__", None) or {})[HEADER_KEY])
    except (KeyError, TypeError, ValueError):
        raise CacheCorruptError(f"{path} has no fastmi header metadata") from None
    if metadata.get("sha256") != expected_sha256:
        raise CacheCorruptError(f"{path}: header checksum differs from the manifest's")
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None or end > data.size:
            raise CacheCorruptError(f"{path}: tensor {name!r} has an unexpected dtype or extent")
        tensors[name] = data[begin:end].view(dtype).reshape(info["shape"])
    if tensors_sha256(tensors) != expected_sha256:
        raise CacheCorruptError(f"{path}: data checksum mismatch (the file was modified or damaged)")
    return tensors, metadata


# ---- the cache ------------------------------------------------------------------------------------
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
        return {k: _metadata_value(self._manifest["metadata"], k) for k in IDENTITY_KEYS}

    @property
    def cache_dtype(self) -> str:
        """How the embeddings are stored: "float32", "bfloat16" or "float16"."""
        return _metadata_value(self._manifest["metadata"], "cache_dtype")

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
                f"the cache at {self.directory} holds no output embedding ({why}); probe='unembedding' needs it. "
                "Use probe='linear' (--probe linear), or run fastmi extract on this cache again (it resumes, "
                "adding only the output embedding)"
            )
        tensors, header = read_safetensors(self.directory / UNEMBEDDING, entry["bytes"], entry["sha256"])
        pick = (lambda a: a) if rows is None else (lambda a: a[rows.cpu().numpy()])
        bias = torch.from_numpy(pick(tensors["bias"]).copy()) if "bias" in tensors else None
        return torch.from_numpy(pick(tensors["weight"]).copy()), bias, str(header.get("source", ""))

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
        lock_path = directory / ".lock"
        created_lock = not lock_path.exists()
        lock = _lock(directory)
        try:
            if overwrite:
                _remove_cache_files(directory)  # only what a cache consists of, even if it is damaged
            manifest = read_manifest(directory)
            if manifest is None:
                if not overwrite and any(p.name not in (".lock", ".manifest.lock") for p in directory.iterdir()):
                    raise ValueError(
                        f"{directory} is not empty and holds no fastmi cache; choose another "
                        "directory (or pass overwrite=True / --overwrite to use it anyway)"
                    )
                manifest = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "metadata": metadata,
                    "shard_rows": int(shard_rows),
                    "targets": None,
                    "units": {},
                }
            else:
                _check_same(directory, manifest, metadata)
                if not resume and manifest["units"]:
                    raise ValueError(
                        f"the cache at {directory} already holds finished units; pass resume=True "
                        "(--resume) to continue it or overwrite=True (--overwrite) to replace it"
                    )
                # Descriptive fields (version, batch size, ...) follow the latest run.
                manifest["metadata"] = manifest["metadata"] | metadata
            writer = cls(directory, manifest)
            writer._lock = lock
            _remove_stale_temporaries(directory)
            writer._commit()
            return writer
        except BaseException:
            lock.close()
            if created_lock:  # a refused run leaves nothing behind
                lock_path.unlink(missing_ok=True)
                if created:
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            raise

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _commit(self) -> None:
        with _manifest_lock(self.directory):
            atomic_write_bytes(self.directory / MANIFEST, json.dumps(self._manifest, indent=1, sort_keys=True).encode())

    def _commit_units(self, finished: Mapping[int, Mapping[int, list]]) -> None:
        """Add ``{layer: {shard: [bytes, sha256]}}`` to the manifest on disk, which other processes
        may have extended since we read it: read, merge and replace under the manifest lock."""
        with _manifest_lock(self.directory):
            manifest = read_manifest(self.directory) or self._manifest
            for layer, shards in finished.items():
                for shard, entry in shards.items():
                    manifest["units"].setdefault(str(layer), {})[str(shard)] = entry
            atomic_write_bytes(self.directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            self._manifest = manifest

    def _commit_fields(self, **fields) -> None:
        """Set top-level manifest entries (targets, unembedding) in the manifest on disk, merged
        with the units other processes may have added since we read it."""
        with _manifest_lock(self.directory):
            manifest = read_manifest(self.directory) or self._manifest
            manifest.update(fields)
            atomic_write_bytes(self.directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
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


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise CacheCorruptError(f"{path} is not valid JSON ({err}); pass overwrite=True to rebuild the cache") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastmi activation cache manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has cache format version {manifest.get('format_version')}, this fastmi reads "
            f"{FORMAT_VERSION}; pass overwrite=True to rebuild it"
        )
    return manifest


def _metadata_value(metadata: Mapping[str, object], key: str):
    if key == "cache_dtype":
        return metadata.get(key) or DEFAULT_CACHE_DTYPE
    return metadata[key]


def _check_same(directory: Path, manifest: dict, metadata: dict) -> None:
    old, new = manifest["metadata"], dict(metadata)
    new.setdefault("cache_dtype", DEFAULT_CACHE_DTYPE)
    differ = [k for k in IDENTITY_KEYS if _metadata_value(old, k) != new.get(k)]
    if differ:
        lines = "; ".join(f"{k}: cache has {_metadata_value(old, k)!r}, this run {new.get(k)!r}" for k in differ)
        raise ValueError(
            f"the cache at {directory} was built for another {', '.join(differ)} ({lines}); "
            "pass overwrite=True (--overwrite) to replace it, or choose another cache directory"
        )


def _lock(directory: Path):
    """An exclusive advisory lock, so two extractions never write one cache (released on any exit)."""
    handle = open(directory / ".lock", "a+")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; single-writer is then the user's job
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RuntimeError(f"another process is extracting into {directory} (it holds {directory / '.lock'})") from None
    return handle


@contextlib.contextmanager
def _manifest_lock(directory: Path) -> Iterator[None]:
    """Held while the manifest is read, merged and replaced: one writer at a time, across processes
    (each rank of a multi-process extraction commits its own units)."""
    with open(directory / ".manifest.lock", "a+") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: one process per cache
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # blocking: another rank's commit takes milliseconds
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_cache_files(directory: Path) -> None:
    """Delete what a fastmi cache consists of, and nothing else."""
    for path in directory.glob("layer_[0-9][0-9][0-9]/*.safetensors*"):
        path.unlink()
    for path in directory.glob("layer_[0-9][0-9][0-9]/.tmp-*"):
        path.unlink()
    for sub in directory.glob("layer_[0-9][0-9][0-9]"):
        with contextlib.suppress(OSError):
            sub.rmdir()
    for name in (TARGETS, UNEMBEDDING, MANIFEST):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary files of a writer that died mid-write; we hold the lock, so none is live."""
    for path in [*directory.glob(f"{_TMP_PREFIX}*"), *directory.glob(f"layer_*/{_TMP_PREFIX}*")]:
        path.unlink()


def format_layers(values: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)
