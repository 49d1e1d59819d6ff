"""The activation cache's two locks, files in its directory held through :mod:`filelock` (flock on
POSIX, msvcrt on Windows); the lock files stay behind after release, empty.

* ``.lock``, the run lock: held by the one extraction that writes the cache, from
  :meth:`CacheWriter.prepare` to :meth:`CacheWriter.close`.  A second extraction into the same
  directory is refused at once, not queued.
* ``.manifest.lock``: held while one process reads, merges and replaces the manifest, so the ranks
  of a multi-process extraction never lose each other's finished units.  Waited for: a commit
  takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["RUN_LOCK", "MANIFEST_LOCK", "run_lock", "manifest_lock"]

RUN_LOCK = ".lock"
MANIFEST_LOCK = ".manifest.lock"


def run_lock(directory: Path) -> FileLock:
    """The held run lock of ``directory`` (``.release()`` it), or RuntimeError if another holds it."""
    # Not thread-local: the extraction may release it from another thread than the one that took it.
    lock = FileLock(directory / RUN_LOCK, thread_local=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise RuntimeError(
            f"another process is extracting into {directory} (it holds {directory / RUN_LOCK})"
        ) from None
    return lock


def manifest_lock(directory: Path) -> FileLock:
    """``with manifest_lock(directory):`` one manifest writer at a time, across processes."""
    return FileLock(directory / MANIFEST_LOCK)
