"""fastmi: how much of a sentence each layer of a language model keeps, as mutual information.

Public names (shared/DESIGN.md section 4) are imported lazily so that ``import fastmi`` stays
cheap and does not pull transformers in until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "BagTargets": "fastmi.bags",
    "Corpus": "fastmi.corpus",
    "extract": "fastmi.extraction",  # not fastmi.extract: a submodule would shadow the function
    "ActivationCache": "fastmi.cache",
    "recoverability": "fastmi.probe",
    "RecoverabilityResult": "fastmi.result",
    "RecoverabilityLoss": "fastmi.loss",
    "MultiLayerRecoverabilityLoss": "fastmi.loss",
    "RecoverabilityTrainer": "fastmi.trainer",
    "load_model": "fastmi.models",
    "plan": "fastmi.planner",  # not fastmi.plan, for the same reason as extract
    "compare": "fastmi.comparison",  # not fastmi.compare: a submodule would shadow the function
}
_SUBMODULES = {
    "bounds",
    "kernels",
    "models",
    "corpus",
    "cache",
    "extraction",
    "hooks",
    "probe",
    "result",
    "report",
    "sweep",
    "cli",
    "curves",
    "comparison",
    "claims",
    "heldout",
}

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"fastmi.{name}")
    else:
        raise AttributeError(f"module 'fastmi' has no attribute {name!r}")
    globals()[name] = value
    return value
