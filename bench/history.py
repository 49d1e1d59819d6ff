"""A bench's figures, kept: every run appends one row to ``bench/results/<bench>.jsonl``, never overwrites.

A row is one JSON object on one line::

    {"bench": "extract", "source": "bench/test_bench_extract.py", "commit": "b94dba4...", "dirty": true,
     "date": "2026-12-07T02:40:16Z", "machine": {"cpu": ..., "cores": 2, "torch": ..., "gpu": null, ...},
     "load": {"1m": 2.1, "5m": 1.7, "15m": 1.9}, "figures": {...}}

``commit`` is the checkout's HEAD and ``dirty`` whether tracked files differ from it (the figures then
measure uncommitted code); where there is no git checkout (a copy of the tree on a lent GPU machine)
``FASTMI_BENCH_COMMIT`` may name the commit, else it is null and ``commit_note`` says why.  ``load``
is the load average when the row is written: on a shared machine it says how much the figures mean.
No row holds a path of the machine that ran it: the repository's root becomes a relative path, the
home, temporary and Python folders a placeholder, any other absolute path its last part.

``FASTMI_BENCH_RESULTS`` names another folder for the rows (a lent machine writes them under $OUT;
append them here with ``cat``).  ``python bench/history.py BENCH`` prints a bench's rows, one a line.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

__all__ = ["RESULTS", "machine", "read", "record", "row", "without_local_paths"]

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]
# An absolute path left after the known folders were replaced: a slash not inside a word, then folders.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>/-])/(?:[\w.+@-]+/)+([\w.+@-]*)")


def record(bench: str, figures: dict, *, source: str | None = None, results: Path | None = None) -> dict:
    """Append a row of ``figures`` to ``<results>/<bench>.jsonl`` and return it."""
    entry = row(bench, figures, source=source)
    folder = Path(results or os.environ.get("FASTMI_BENCH_RESULTS") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{bench}.jsonl", "a") as history:
        history.write(json.dumps(entry, default=str) + "\n")
    return entry


def row(bench: str, figures: dict, *, source: str | None = None) -> dict:
    """The row :func:`record` appends: where, when and on what the figures were measured, and the figures."""
    commit, dirty, note = _commit()
    entry = {"bench": bench, "source": source, "commit": commit, "dirty": dirty}
    if note:
        entry["commit_note"] = note
    entry |= {"date": _utc_now(), "machine": machine(), "load": _load(), "figures": figures}
    # Through JSON first, so that tuples, numpy scalars and paths are what the file will hold.
    return without_local_paths(json.loads(json.dumps(entry, default=str)))


def read(bench: str, results: Path | None = None) -> list[dict]:
    """Every row of ``bench``, oldest first."""
    path = Path(results or os.environ.get("FASTMI_BENCH_RESULTS") or RESULTS) / f"{bench}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def machine() -> dict:
    """The CPU's model and cores, the OS, Python, torch and the GPU (if torch sees one)."""
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": None,
        "gpu": None,
    }
    try:
        import torch
    except ImportError:
        return info
    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def without_local_paths(value):
    """``value`` with every path of this machine replaced (module docstring), in keys and values alike."""
    if isinstance(value, dict):
        return {without_local_paths(k): without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    if not isinstance(value, str) or "/" not in value:
        return value
    for folder, placeholder in _local_folders():
        # The folder itself, not a longer name that starts with it ("/root" is not "/rootfs").
        value = re.sub(re.escape(folder) + r"(/|(?![\w.+@-]))", partial(_placed, placeholder), value)
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "<path>", value)


def _placed(placeholder: str, match: re.Match) -> str:
    """What a local folder becomes: the repository's root nothing (paths in it become relative)."""
    if match.group(1) == "/":
        return placeholder + "/" if placeholder else ""
    return placeholder or "."


def _local_folders() -> list[tuple[str, str]]:
    """(folder, what it becomes), the deepest first so that a folder inside another is caught first."""
    folders = {
        str(REPO): "",
        os.path.realpath(tempfile.gettempdir()): "<tmp>",
        tempfile.gettempdir(): "<tmp>",
        sys.prefix: "<python>",
        sys.base_prefix: "<python>",
        str(Path.home()): "~",
    }
    return sorted(((f, p) for f, p in folders.items() if len(f) > 1), key=lambda fp: -len(fp[0]))


def _commit() -> tuple[str | None, bool | None, str | None]:
    """(HEAD, whether tracked files differ from it, a note when either is unknown)."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        given = os.environ.get("FASTMI_BENCH_COMMIT")
        if given:
            return given, None, "given by FASTMI_BENCH_COMMIT (no git checkout here): dirty unknown"
        return None, None, "unknown: no git checkout here and no FASTMI_BENCH_COMMIT"
    return head, dirty, None


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load() -> dict | None:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return None
    return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    for entry in read(sys.argv[1]):
        print(json.dumps(entry))
