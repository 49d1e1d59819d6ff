"""The verdict rule of the third claim's test, as stated in docs/finetune.md before any run.

Input: for each lambda > 0, the contrast against the control (lambda = 0) of every outcome in the
verdict's family, as a Bonferroni-adjusted interval ``(point, low, high)``: the objective's own
quantity (E1 at the tuned layer) and the downstream accuracies (D1, D2 at the tuned and the last
layer).  Output: one of three wordings and the reason.

* **holds at this scale**: at some lambda, a downstream interval lies wholly above 0, E1's lies
  wholly above 0, and no downstream interval at that lambda lies wholly below 0;
* **contradicted at this scale**: at every lambda, every downstream interval lies below the smallest
  improvement of interest (+0.01 accuracy), so an improvement of that size is excluded everywhere;
* **not shown at this scale**: anything else.

The plan lists "holds" first and its two conditions can both be met (a downstream interval wholly
inside (0, +0.01)): the rule is applied in the plan's order, and the reason then says that the
improvement shown is below the smallest of interest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["HOLDS", "CONTRADICTED", "NOT_SHOWN", "SMALLEST_IMPROVEMENT", "Verdict", "claim_verdict"]

HOLDS = "holds at this scale"
CONTRADICTED = "contradicted at this scale"
NOT_SHOWN = "not shown at this scale"
SMALLEST_IMPROVEMENT = 0.01  # one accuracy point: the smallest downstream gain the plan calls of interest


@dataclass(frozen=True)
class Verdict:
    wording: str  # HOLDS, CONTRADICTED or NOT_SHOWN
    reason: str

    def __str__(self) -> str:
        return f"{self.wording}: {self.reason}"


def _interval(value, where: str) -> tuple[float, float, float]:
    """``(point, low, high)`` of a triple, a mapping with those keys, or an object with those fields."""
    if isinstance(value, Mapping):
        triple = (value.get("point"), value.get("low"), value.get("high"))
    elif isinstance(value, Sequence) and not isinstance(value, str):
        triple = tuple(value)
    else:
        triple = tuple(getattr(value, name, None) for name in ("point", "low", "high"))
    if len(triple) != 3 or any(x is None for x in triple):
        raise TypeError(f"{where}: an interval is (point, low, high) or has point, low and high; got {value!r}")
    point, low, high = (float(x) for x in triple)
    if not low <= high:
        raise ValueError(f"{where}: the interval's low {low} is above its high {high}")
    return point, low, high


def _say(name: str, lam: float, interval: tuple[float, float, float]) -> str:
    point, low, high = interval
    return f"{name} at lambda {lam:g}: {point:+.3f} [{low:+.3f}, {high:+.3f}]"


def claim_verdict(
    contrasts: Mapping[float, Mapping[str, object]],
    objective: str = "E1",
    downstream: Sequence[str] | None = None,
    smallest_improvement: float = SMALLEST_IMPROVEMENT,
) -> Verdict:
    """The verdict from ``contrasts[lambda][outcome]`` = adjusted ``(point, low, high)`` of lambda's arm
    minus the control.  ``downstream``: the downstream outcomes (default: every outcome but
    ``objective``); each lambda must hold all of them and ``objective``."""
    if not contrasts:
        raise ValueError("no contrasts: the verdict needs at least one lambda > 0 against the control")
    lambdas = sorted(float(lam) for lam in contrasts)
    if lambdas[0] <= 0:
        raise ValueError(f"contrasts are of lambda > 0 against the control; got lambda {lambdas[0]:g}")
    first = contrasts[next(iter(contrasts))]
    names = list(downstream) if downstream is not None else [k for k in first if k != objective]
    if not names:
        raise ValueError("no downstream outcome: the verdict is about downstream tasks")
    table: dict[float, dict[str, tuple[float, float, float]]] = {}
    for lam, outcomes in contrasts.items():
        missing = [k for k in (objective, *names) if k not in outcomes]
        if missing:
            raise ValueError(f"lambda {float(lam):g} lacks the outcomes {missing}")
        table[float(lam)] = {k: _interval(outcomes[k], f"{k} at lambda {float(lam):g}") for k in (objective, *names)}

    all_below = all(table[lam][k][2] < smallest_improvement for lam in lambdas for k in names)
    for lam in lambdas:
        row = table[lam]
        gains = [k for k in names if row[k][1] > 0]
        losses = [k for k in names if row[k][2] < 0]
        if gains and row[objective][1] > 0 and not losses:
            reason = (
                f"{_say(gains[0], lam, row[gains[0]])} lies wholly above 0, {_say(objective, lam, row[objective])} "
                "too, and no downstream contrast at that lambda lies wholly below 0"
            )
            if all_below:
                reason += f"; but every downstream interval lies below +{smallest_improvement:g}, so the gain shown is "
                reason += "smaller than the smallest improvement of interest"
            return Verdict(HOLDS, reason)
    if all_below:
        lam, k = max(((lam, k) for lam in lambdas for k in names), key=lambda lk: table[lk[0]][lk[1]][2])
        return Verdict(
            CONTRADICTED,
            f"every downstream contrast's interval lies below +{smallest_improvement:g} at every lambda "
            f"(the highest upper limit: {_say(k, lam, table[lam][k])})",
        )
    return Verdict(NOT_SHOWN, _why_not_shown(table, lambdas, objective, names, smallest_improvement))


def _why_not_shown(table, lambdas, objective, names, smallest_improvement) -> str:
    reasons = []
    for lam in lambdas:
        row = table[lam]
        gains = [k for k in names if row[k][1] > 0]
        losses = [k for k in names if row[k][2] < 0]
        if not gains:
            reasons.append(f"at lambda {lam:g} no downstream interval lies wholly above 0")
        elif row[objective][1] <= 0:
            reasons.append(f"at lambda {lam:g} {gains[0]} gains but {_say(objective, lam, row[objective])} does not")
        else:
            reasons.append(f"at lambda {lam:g} {gains[0]} gains but {losses[0]} lies wholly below 0")
    lam, k = next((lam, k) for lam in lambdas for k in names if table[lam][k][2] >= smallest_improvement)
    reasons.append(f"an improvement of +{smallest_improvement:g} is not excluded ({_say(k, lam, table[lam][k])})")
    return "; ".join(reasons)
