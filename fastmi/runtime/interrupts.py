"""One plain line, not a traceback, when a run is stopped by Ctrl-C or by a full disk.

Long-running steps tell this module what they have safely put on disk as they go
(:func:`note_kept`), and how many bytes they still mean to write (:func:`note_remaining`).  The
command line (:func:`run_command`) turns a ``KeyboardInterrupt`` into one line saying what was kept
and how to resume, exit status 130 (128 + SIGINT, the shell's convention), and an ``OSError`` of a
full disk into one line naming the directory, the space free there and the space still needed.

Nothing here makes the cache consistent: that is the job of the atomic writes in
:mod:`fastmi.activations.cache` (a unit exists only once the manifest lists it).  This module only reports.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["note_kept", "note_remaining", "forget", "run_command", "interrupted_message", "disk_full_message"]

EXIT_INTERRUPTED = 130
EXIT_DISK_FULL = 1

# Each value is either fixed or a function asked only when a report is printed, so that it tells
# the state at the moment of the interrupt (a shard may have been listed a moment before).
Text = str | Callable[[], str]
Bytes = int | Callable[[], int]
_kept: dict[str, Text] = {}  # place -> what is finished there
_remaining: dict[str, Bytes] = {}  # place -> bytes still to be written there (an estimate)
_last_place: list[str] = []


def note_kept(place: str | os.PathLike, what: Text) -> None:
    """Record that ``what`` (e.g. "3 of 10 shards", or a function returning it) is finished in ``place``."""
    key = str(place)
    _kept[key] = what
    _last_place[:] = [key]


def note_remaining(place: str | os.PathLike, nbytes: Bytes) -> None:
    """Record that about ``nbytes`` (or what a function returns) more bytes are to be written under ``place``."""
    _remaining[str(place)] = nbytes
    _last_place[:] = [str(place)]


def _kept_text() -> str:
    return "; ".join(f"{what() if callable(what) else what} in {place}" for place, what in _kept.items())


def _remaining_bytes() -> int:
    return sum(max(int(n() if callable(n) else n), 0) for n in _remaining.values())


def forget() -> None:
    """Start a new run: nothing is kept yet."""
    _kept.clear()
    _remaining.clear()
    _last_place.clear()


def interrupted_message(command: str) -> str:
    if not _kept:
        return (
            f"fastmi {command}: interrupted before anything was finished; nothing was kept. "
            "Run the same command again to start over."
        )
    return f"fastmi {command}: interrupted. Kept {_kept_text()}. Run the same command again to resume from there."


def disk_full_message(command: str, err: OSError) -> str:
    place = Path(err.filename) if err.filename else Path(_last_place[0]) if _last_place else Path.cwd()
    directory = _existing_directory(place)
    free = shutil.disk_usage(directory).free
    need = _remaining_bytes()  # the run's own estimate of what it still meant to write
    wanted = f"about {_size(need)} more is needed there" if need else "more space is needed there"
    kept = _kept_text()
    resume = f"Kept {kept}; free" if kept else "Free"
    return (
        f"fastmi {command}: error: no space left on the device of {directory} ({_size(free)} free; {wanted}). "
        f"{resume} some space (or choose another directory) and run the same command again."
    )


def run_command(command: str, run: Callable[[], int]) -> int:
    """``run()``, with Ctrl-C and a full disk reported in one line on stderr."""
    forget()
    try:
        return int(run() or 0)
    except KeyboardInterrupt:
        print(f"\n{interrupted_message(command)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(disk_full_message(command, err), file=sys.stderr)
        return EXIT_DISK_FULL


def _existing_directory(path: Path) -> Path:
    path = path if path.is_dir() else path.parent
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(nbytes: int | None) -> str:
    value = float(nbytes or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
