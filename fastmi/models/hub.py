"""Hub ids: is the model cached, can the hub be reached, and what to tell a user when neither.

Without a network, transformers retries a hub id for about half a minute before it gives up, then
recommends a command (``huggingface-cli``) that current huggingface_hub no longer installs.  fastmi
asks first: one connection attempt of at most a few seconds; if the hub cannot be reached, a cached
model loads offline at once and an uncached one fails at once, naming ``hf download``.
"""

from __future__ import annotations

import difflib
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["hub_reachable", "is_cached", "not_available_message"]

PROBE_SECONDS = 3.0
_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    return any(os.environ.get(name, "0").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub endpoint (HF_ENDPOINT) opens within ``timeout`` seconds.

    Behind a proxy (HTTPS_PROXY / ALL_PROXY set) the direct connection says nothing: assume yes and
    let the hub client use the proxy.  Name resolution cannot be given a timeout, so the attempt
    runs in a daemon thread that is simply abandoned if it hangs.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    answer: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def is_cached(name: str, revision: str | None = None) -> bool:
    """Whether the local Hugging Face cache holds ``name``'s config.json (at ``revision``)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)
    except ValueError:  # not a valid repo id
        return False


def not_available_message(name: str, why: str) -> str:
    """Why ``name`` cannot be loaded, the command that gets it, and a hint if it was meant as a path."""
    text = (
        f"model {name!r} is not available: {why}. Download it with `hf download {name}` (on a machine "
        "with hub access; then copy the Hugging Face cache or point HF_HOME at it), or pass a local "
        "directory holding the model (config.json, weights, tokenizer)"
    )
    return text + _path_hint(name) + "."


def _path_hint(name: str) -> str:
    """If ``name`` reads like a relative path, say that no such directory exists, and what is near."""
    path = Path(name).expanduser()
    parent = path.parent if str(path.parent) not in ("", ".") else Path(".")
    if not parent.is_dir():  # "org/name" with no folder "org" here: a hub id, not a path
        return ""
    siblings = [p.name for p in parent.iterdir() if p.is_dir()]
    close = difflib.get_close_matches(path.name, siblings, n=3)
    if str(parent) == "." and not close:
        return ""
    hint = f"; there is no local directory {path.resolve()} either"
    if close:
        hint += " (did you mean " + " or ".join(str(parent / c) for c in close) + "?)"
    return hint
