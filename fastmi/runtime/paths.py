"""Where fastmi keeps what it makes between runs: one rule for every cache.

``FASTMI_HOME`` if set, else ``$XDG_CACHE_HOME/fastmi``, else ``~/.cache/fastmi``.  Under it,
``activations/`` holds activation caches made without an explicit directory and ``models/`` the
dequantised GGUF models and the weight-hash index.  Every default location in fastmi comes from
:func:`fastmi_home`, so the activations and the models never disagree about where home is.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fastmi_home", "activations_home", "models_home"]


def fastmi_home() -> Path:
    """``$FASTMI_HOME``, else ``$XDG_CACHE_HOME/fastmi``, else ``~/.cache/fastmi`` (not created)."""
    home = os.environ.get("FASTMI_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    if xdg and Path(xdg).expanduser().is_absolute():
        return Path(xdg).expanduser() / "fastmi"
    return Path.home() / ".cache" / "fastmi"


def activations_home() -> Path:
    return fastmi_home() / "activations"


def models_home() -> Path:
    return fastmi_home() / "models"
