"""fastmi: how much of a sentence each layer of a language model keeps, as mutual information.

Public names (shared/DESIGN.md section 4) are imported lazily so that ``import fastmi`` stays
cheap and does not pull transformers in until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "BagTargets": "fastmi.data.bags",
    "Corpus": "fastmi.data.corpus",
    "extract": "fastmi.activations.extraction",  # not fastmi.extract: a submodule would shadow the function
    "ActivationCache": "fastmi.activations.cache",
    "recoverability": "fastmi.probe.recoverability",
    "ProbeConfig": "fastmi.probe.config",
    "TrainConfig": "fastmi.probe.config",
    "RecoverabilityResult": "fastmi.results.result",
    "RecoverabilityLoss": "fastmi.finetune.loss",
    "MultiLayerRecoverabilityLoss": "fastmi.finetune.loss",
    "RecoverabilityTrainer": "fastmi.finetune.trainer",
    "load_model": "fastmi.models.loading",
    "plan": "fastmi.planning.planner",  # not fastmi.plan, for the same reason as extract
    "compare": "fastmi.stats.comparison",  # not fastmi.compare: a submodule would shadow the function
}
# The modules these names stood for when fastmi was one flat folder; ``fastmi.bounds`` and the
# rest keep working as attributes.  The subpackages themselves (``fastmi.stats`` ...) import as usual.
_SUBMODULES = {
    "bounds": "fastmi.stats.bounds",
    "kernels": "fastmi.kernels",
    "models": "fastmi.models",
    "corpus": "fastmi.data.corpus",
    "cache": "fastmi.activations.cache",
    "extraction": "fastmi.activations.extraction",
    "hooks": "fastmi.models.hooks",
    "probe": "fastmi.probe",
    "result": "fastmi.results.result",
    "report": "fastmi.results.plot",
    "sweep": "fastmi.sweep",
    "cli": "fastmi.cli",
    "curves": "fastmi.probe.curves",
    "comparison": "fastmi.stats.comparison",
    "claims": "fastmi.stats.claims",
    "heldout": "fastmi.stats.heldout",
    "loss": "fastmi.finetune.loss",
    "trainer": "fastmi.finetune.trainer",
}

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'fastmi' has no attribute {name!r}")
    globals()[name] = value
    return value
