"""What each probe setting accepts: the checks and command-line parsers that
:mod:`fastmi.probe.config` declares its fields with, and the values some settings take.

A check is ``check(name, value)``: it raises ValueError naming the setting ``name`` (a field's name
from Python, its flag from the command line).  Nothing heavy is imported at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "check_curve",
    "check_probe_form",
    "parse_train_softmax",
    "DEFAULT_CURVE",
    "DEFAULT_PROPOSAL",
    "ENTROPY_METHODS",
    "PRECISIONS",
    "AUTO_FORMS",
    "PROBE_FORMS",
    "PROPOSALS",
    "SAMPLED_ADAM",
]

PROBE_FORMS = ("auto", "embedding", "linear", "unembedding")
AUTO_FORMS = ("embedding", "unembedding")  # what "auto" fits and chooses between, per layer
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
SAMPLED_ADAM = ("dense", "lazy")
PROPOSALS = ("unigram", "loguniform", "uniform")
DEFAULT_PROPOSAL = "unigram"
DEFAULT_CURVE = (0.125, 0.25, 0.5, 1.0)
# fastmi.stats.bounds.ENTROPY_METHODS (a test holds them equal): importing it would load numpy at CLI start.
ENTROPY_METHODS = ("plugin", "miller_madow")

Check = Callable[[str, Any], None]


# ---- checks: each raises ValueError naming the setting as the caller calls it ---------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def resamples(name: str, value: Any) -> None:
    """A bootstrap count the confidence bounds accept (:mod:`fastmi.stats.bootstrap`)."""
    from fastmi.stats.bootstrap import MIN_RESAMPLES

    if not _is_int(value) or value < MIN_RESAMPLES:
        raise ValueError(f"{name} must be an integer of at least {MIN_RESAMPLES}, got {value!r}")


def non_negative_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def fraction(name: str, value: Any) -> None:
    if not _is_number(value) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")


def positive(name: str, value: Any) -> None:
    if not _is_number(value) or not float(value) > 0.0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def non_negative(name: str, value: Any) -> None:
    if not _is_number(value) or not float(value) >= 0.0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def share(name: str, value: Any) -> None:
    if not _is_number(value) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")


def one_of(choices: tuple[str, ...]) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")

    return check


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def optional_bool(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be true, false or unset (None), got {value!r}")


def vocab(name: str, value: Any) -> None:
    from fastmi.data.alphabet import parse_vocab

    parse_vocab(value)  # its message names "vocab", which the flag contains


def train_softmax(name: str, value: Any) -> None:
    parse_train_softmax(value)


def curve(name: str, value: Any) -> None:
    check_curve(value)


def device(name: str, value: Any) -> None:
    if value is None:
        return
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name} {value!r} is not a torch device ({err})") from None


def memory(name: str, value: Any) -> None:
    if value is not None:
        positive_int(name, value)


def check_probe_form(probe: str) -> str:
    if probe not in PROBE_FORMS:
        raise ValueError(f"probe must be one of {PROBE_FORMS}, got {probe!r}")
    return probe


def parse_train_softmax(setting: str) -> tuple[int | None, str | None]:
    """``"full"`` -> (None, None); ``"sampled:K[:proposal]"`` -> (K, proposal); a clear error otherwise."""
    if setting == "full":
        return None, None
    parts = setting.split(":") if isinstance(setting, str) else []
    if len(parts) in (2, 3) and parts[0] == "sampled":
        proposal = parts[2] if len(parts) == 3 else DEFAULT_PROPOSAL
        try:
            k = int(parts[1])
        except ValueError:
            k = 0
        if k >= 1 and proposal in PROPOSALS:
            return k, proposal
    raise ValueError(
        f"train_softmax must be 'full' or 'sampled:K' with an integer K >= 1, optionally "
        f"'sampled:K:unigram', 'sampled:K:loguniform' or 'sampled:K:uniform'; got {setting!r}"
    )


def check_curve(curve: Sequence[float] | None) -> tuple[float, ...] | None:
    """Fractions of the training rows, sorted and distinct, in (0, 1], ending with 1 (added if absent)."""
    if curve is None:
        return None
    try:
        fractions = sorted({float(f) for f in curve})
    except (TypeError, ValueError):
        raise ValueError(f"curve must be a sequence of fractions in (0, 1], got {curve!r}") from None
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"curve fractions must lie in (0, 1], got {list(curve)}")
    if fractions[-1] != 1.0:
        fractions.append(1.0)
    if len(fractions) < 2:
        raise ValueError("a curve needs at least one fraction below 1, e.g. (0.125, 0.25, 0.5, 1.0)")
    return tuple(fractions)


# ---- parsers of command-line text ------------------------------------------------------------------
def parse_fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise ValueError(f"takes comma-separated fractions such as 0.125,0.25,0.5,1, got {text!r}") from None


def parse_bytes_text(text: str) -> int:
    from fastmi.probe.memory import parse_bytes

    return parse_bytes(text)
