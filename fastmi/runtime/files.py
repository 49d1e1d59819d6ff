"""Files that are whole or absent, and content hashes: the two things every stage that writes to
disk needs (the cache, results, probe checkpoints, fine-tuned models, the weight-hash index)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["TMP_PREFIX", "atomic_write_bytes", "atomic_write_text", "content_hash", "fsync_dir"]

# Temporary files start with this, so that a folder's leftovers from a killed run can be found.
TMP_PREFIX = ".tmp-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread, so concurrent writers of one file never share a temporary;
    # not mkstemp, whose 0600 mode would make the renamed file private.
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}-{threading.get_ident()}"
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
    fsync_dir(path.parent)  # the rename itself must survive a power cut


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems (and Windows) cannot fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def content_hash(value: Any, default=None) -> str:
    """sha256 (hex) of ``value`` as canonical JSON (sorted keys): equal settings, equal hash, on any
    machine and in any process.  ``default`` converts what JSON cannot hold, as in :func:`json.dumps`."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=default).encode()).hexdigest()
