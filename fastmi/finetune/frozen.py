"""A warning for the one silent mistake of fine-tuning through :class:`fastmi.RecoverabilityLoss`.

:func:`fastmi.load_model` returns a frozen model (eval mode, no parameter requires grad), as
extraction wants.  Hidden states of such a model carry no graph back into it, so an optimiser over
``[*model.parameters(), *loss.parameters()]`` trains the probe alone, and nothing says so.  The loss
calls :func:`warn_if_frozen` on the hidden states it receives.  A user who means to train only the
probe on fixed features can silence it: ``warnings.simplefilter("ignore", FrozenHiddenStatesWarning)``.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["FrozenHiddenStatesWarning", "warn_if_frozen"]


class FrozenHiddenStatesWarning(UserWarning):
    """Hidden states without a gradient path reached a training loss."""


def warn_if_frozen(hidden: torch.Tensor, where: str = "RecoverabilityLoss") -> bool:
    """Warn (and return True) when ``hidden`` is computed with grad enabled yet cannot carry a
    gradient back into the model: the model that made it is frozen, or it was detached."""
    if not torch.is_grad_enabled() or hidden.requires_grad:
        return False
    warnings.warn(
        f"the hidden states reaching {where} do not require grad, so training through it updates the probe "
        "only, never the model: fastmi.load_model returns a frozen model in eval mode; pass "
        "load_model(..., trainable=True) (or call model.train().requires_grad_(True)) to fine-tune it",
        FrozenHiddenStatesWarning,
        stacklevel=_caller_level(),
    )
    return True


def _caller_level() -> int:
    """The stack level of the first frame outside fastmi and torch (nn.Module adds frames of its own)."""
    import os
    import sys

    roots = tuple(os.path.dirname(m.__file__) for m in (sys.modules["fastmi"], torch))
    frame, level = sys._getframe(2), 2  # 1 is warn_if_frozen itself, as seen from warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(roots):
        frame, level = frame.f_back, level + 1
    return level
