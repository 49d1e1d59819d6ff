"""Every argument checked before any work: a run that will fail, fails in its first second.

Extraction can take hours and probing minutes; an argument they would refuse at the end (an
alphabet setting, a layer the model does not have, a batch size of 0) must be refused before a
model loads or a file is written.  The number of layers comes from the model's config alone
(:func:`fastmi.models.loading.model_num_layers`), never from loading its weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from fastmi.defaults import DEFAULT_MAX_LENGTH

__all__ = [
    "check_extraction_arguments",
    "check_output_dir",
    "check_cache_dir",
    "resolve_device",
]


def _positive_int(name: str, value, flag: str | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{flag or name} must be a positive integer, got {value!r}")


def resolve_device(device: str | torch.device | None) -> str:
    """The device every command defaults to (cuda if available, else cpu), and a clear error for
    one that does not exist here."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device)
    if text == "auto":  # load_model shards over all GPUs
        if not torch.cuda.is_available():
            raise ValueError("--device auto shards the model over GPUs, but no CUDA device is available")
        return text
    try:
        parsed = torch.device(text)
    except RuntimeError as err:
        raise ValueError(f"--device {text!r} is not a torch device ({err})") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def check_extraction_arguments(
    models: Sequence[str],
    layers="all",
    pooling: str = "mean",
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
    shard_rows: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    *,
    shard_bytes: int | None = None,
    padding_side: str | None = None,
    as_flags: bool = True,
) -> dict[str, int]:
    """Check what :func:`fastmi.extract` would check, and ``layers`` against each model's config;
    return each model's number of blocks.  ``revision`` applies to the hub ids among ``models``.

    :func:`fastmi.extract` itself calls this (``as_flags=False``: errors name its keyword arguments,
    ``batch_size``, rather than the CLI's flags, ``--batch-size``), so the two never disagree.
    """
    from fastmi.activations.inputs import parse_layers
    from fastmi.kernels.reference import POOL_MODES
    from fastmi.models.loading import is_local_spec, model_num_layers

    def named(name: str) -> str:
        return "--" + name.replace("_", "-") if as_flags else name

    if pooling not in POOL_MODES:
        raise ValueError(f"{named('pooling')} must be one of {', '.join(POOL_MODES)}, got {pooling!r}")
    _positive_int("batch_size", batch_size, named("batch_size"))
    _positive_int("max_length", max_length, named("max_length"))
    for name, value in (("shard_rows", shard_rows), ("shard_bytes", shard_bytes)):
        if value is not None:
            _positive_int(name, value, named(name))
    if padding_side not in (None, "left", "right"):
        raise ValueError(f"{named('padding_side')} must be 'left' or 'right', got {padding_side!r}")
    resolve_device(device)
    blocks = {}
    for spec in models:
        rev = None if is_local_spec(spec) else revision
        blocks[spec] = model_num_layers(spec, rev, trust_remote_code)
        try:
            parse_layers(layers, blocks[spec])
        except ValueError as err:
            raise ValueError(f"{spec}: {err}") from None
    return blocks


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse an output directory that could never be written, before any work (nothing is created).

    Without this, an unwritable folder or one naming a file surfaced as a PermissionError or
    FileExistsError traceback, and only after the model had loaded or the probe had trained.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a directory; name a directory")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise ValueError(f"{flag} {path} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "write in" if existing == path.absolute() else "create folders in"
        raise ValueError(f"{flag} {path}: no permission to {what} {existing}; choose a directory you can write to")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the one whose permissions decide)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_cache_dir(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> None:
    """:func:`check_output_dir`, and refuse a folder holding other things than a cache, as
    :func:`fastmi.extract` would once the model had loaded."""
    check_output_dir(path, flag)
    path = Path(path).expanduser()
    if overwrite or not path.is_dir() or (path / "manifest.json").is_file():
        return
    if any(p.name not in (".lock", ".manifest.lock") for p in path.iterdir()):
        raise ValueError(
            f"{flag} {path} is not empty and holds no fastmi cache; choose another directory "
            "(or pass --overwrite to use it anyway)"
        )
