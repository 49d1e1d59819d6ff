"""The activation cache's layout, identity and manifest (shared/DESIGN.md section 6).

The manifest (``<dir>/manifest.json``) is the source of truth: which extraction identity the
cache holds, its metadata, and every finished unit (layer, shard) with its size and sha256.  Two
caches answer the same question only if their identities (:data:`IDENTITY_KEYS`) agree.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from fastmi.activations.locks import MANIFEST_LOCK, RUN_LOCK
from fastmi.activations.shard_files import CacheCorruptError
from fastmi.runtime.files import TMP_PREFIX, content_hash

__all__ = [
    "IDENTITY_KEYS",
    "CACHE_DTYPES",
    "DEFAULT_CACHE_DTYPE",
    "resolve_cache_dtype",
    "default_cache_dir",
    "read_manifest",
    "manifest_for_run",
    "manifest_bytes",
    "check_same",
    "format_layers",
]

FORMAT = "fastmi-activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TARGETS = "targets.safetensors"
UNEMBEDDING = "unembedding.safetensors"  # the model's output embedding, for probe="unembedding"
INPUT_EMBEDDING = "input_embedding.safetensors"  # the input embedding, when it is not the output one
# Two caches answer the same question only if all of these agree; anything else (device, batch
# size) changes results by rounding at most and is recorded, not enforced.
IDENTITY_KEYS = ("model", "revision", "dtype", "pooling", "max_length", "corpus_fingerprint", "cache_dtype")
# How the pooled embeddings are stored.  Caches made before the setting existed are fp32.
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"} | {k: k for k in CACHE_DTYPES}
DEFAULT_CACHE_DTYPE = "float32"


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
    digest = content_hash(_hashed_identity(identity))
    return activations_home() / f"{slug}-{digest[:12]}"


def layer_dir(directory: Path, layer: int) -> Path:
    return directory / f"layer_{layer:03d}"


def shard_path(directory: Path, layer: int, shard: int) -> Path:
    return layer_dir(directory, layer) / f"shard_{shard:05d}.safetensors"


# ---- the manifest ---------------------------------------------------------------------------------
def new_manifest(metadata: dict, shard_rows: int) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": metadata,
        "shard_rows": int(shard_rows),
        "targets": None,
        "units": {},
    }


def manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True).encode()


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


def metadata_value(metadata: Mapping[str, object], key: str):
    if key == "cache_dtype":
        return metadata.get(key) or DEFAULT_CACHE_DTYPE
    return metadata[key]


def manifest_for_run(directory: Path, metadata: dict, shard_rows: int, resume: bool, overwrite: bool) -> dict:
    """The manifest a run writing ``metadata`` starts from: a new one, the cache's own (same
    identity), or a refusal with the reason.  Call it holding the run lock: it deletes what a cache
    consists of (``overwrite``, even a damaged cache) and the temporaries of dead writers."""
    if overwrite:
        remove_cache_files(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        if not overwrite and not holds_only_locks(directory):
            raise ValueError(
                f"{directory} is not empty and holds no fastmi cache; choose another "
                "directory (or pass overwrite=True / --overwrite to use it anyway)"
            )
        manifest = new_manifest(metadata, shard_rows)
    else:
        check_same(directory, manifest, metadata)
        if not resume and manifest["units"]:
            raise ValueError(
                f"the cache at {directory} already holds finished units; pass resume=True "
                "(--resume) to continue it or overwrite=True (--overwrite) to replace it"
            )
        # Descriptive fields (version, batch size, ...) follow the latest run.
        manifest["metadata"] = manifest["metadata"] | metadata
    remove_stale_temporaries(directory)
    return manifest


def check_same(directory: Path, manifest: dict, metadata: dict) -> None:
    """Refuse, naming every difference, a run whose identity differs from the cache's."""
    old, new = manifest["metadata"], dict(metadata)
    new.setdefault("cache_dtype", DEFAULT_CACHE_DTYPE)
    differ = [k for k in IDENTITY_KEYS if metadata_value(old, k) != new.get(k)]
    if differ:
        lines = "; ".join(f"{k}: cache has {metadata_value(old, k)!r}, this run {new.get(k)!r}" for k in differ)
        raise ValueError(
            f"the cache at {directory} was built for another {', '.join(differ)} ({lines}); "
            "pass overwrite=True (--overwrite) to replace it, or choose another cache directory"
        )


# ---- the files --------------------------------------------------------------------------------------
def holds_only_locks(directory: Path) -> bool:
    return all(p.name in (RUN_LOCK, MANIFEST_LOCK) for p in directory.iterdir())


def remove_cache_files(directory: Path) -> None:
    """Delete what a fastmi cache consists of, and nothing else."""
    for path in directory.glob("layer_[0-9][0-9][0-9]/*.safetensors*"):
        path.unlink()
    for path in directory.glob(f"layer_[0-9][0-9][0-9]/{TMP_PREFIX}*"):
        path.unlink()
    for sub in directory.glob("layer_[0-9][0-9][0-9]"):
        with contextlib.suppress(OSError):
            sub.rmdir()
    for name in (TARGETS, UNEMBEDDING, INPUT_EMBEDDING, MANIFEST):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files of a writer that died mid-write; call it only holding the run lock, so that
    none is live."""
    for path in [*directory.glob(f"{TMP_PREFIX}*"), *directory.glob(f"layer_*/{TMP_PREFIX}*")]:
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
