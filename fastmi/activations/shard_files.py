"""One safetensors file of the activation cache: its bytes, with a checksum of its tensors in the
header, and a read that memory-maps it and refuses it unless size and checksums match the manifest.

No pickle: the header is JSON and the data raw little-endian arrays (safetensors' format).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

__all__ = ["CacheCorruptError", "HEADER_KEY", "encode_safetensors", "read_safetensors", "tensors_sha256"]

HEADER_KEY = "fastmi"
# bfloat16 has no numpy dtype: its raw 16-bit words are read as uint16 and widened by torch.
_ST_DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16, "BF16": np.uint16}


class CacheCorruptError(RuntimeError):
    """A cache file does not match what the manifest recorded for it (truncated, edited, lost)."""


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
