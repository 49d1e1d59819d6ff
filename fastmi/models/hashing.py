"""Content hashes of model files, remembered so that a load does not re-read gigabytes.

A file's sha256 is stored in ``<cache_dir>/file-hashes.json`` under the key (real path, size,
mtime in ns); a file that changes gets a new key and is hashed again.  The index is rewritten
atomically (temporary file, then rename); two processes racing can only lose an entry, which
costs one re-hash, never a wrong hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fastmi.runtime.files import atomic_write_text

__all__ = ["file_sha256", "weights_revision", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
INDEX_NAME = "file-hashes.json"
_CHUNK = 1 << 24


def file_sha256(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 hex of the file's bytes, looked up in (and added to) the index in ``cache_dir``."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = Path(cache_dir) / INDEX_NAME if cache_dir is not None else None
    index = _read_index(index_path)
    if key in index:
        return index[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if index_path is not None:
        index = _read_index(index_path)  # re-read: another process may have added entries
        index[key] = digest
        _write_index(index_path, index)
    return digest


def weights_revision(directory: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """``"sha256:<hex>"`` over the names and contents of the weight files in ``directory``."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in the model directory {directory}")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p, cache_dir)}\n".encode())
    return f"sha256:{h.hexdigest()}"


def _read_index(index_path: Path | None) -> dict[str, str]:
    if index_path is None or not index_path.exists():
        return {}
    try:
        data = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged index is only a lost memo: rebuild it
    return data if isinstance(data, dict) else {}


def _write_index(index_path: Path, index: dict[str, str]) -> None:
    atomic_write_text(index_path, json.dumps(index, indent=0, sort_keys=True))
