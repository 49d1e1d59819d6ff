"""A hint when a run's bounds say nothing: most layers vacuous, and what to try instead.

On a small corpus the default alphabet (every id observed, thousands of them) cannot be learned
from a few hundred sentences, nor its entropy estimated, so every bound is clamped at 0.  The
alphabet is a statement about *what* is measured (I(T; z) or I(f(T); z)), so fastmi does not
change it behind the user's back; it says what happened and names a ``top:K`` that such a corpus
can bound (see :mod:`fastmi.data.alphabet`).
"""

from __future__ import annotations

from fastmi.results.columns import LOWER_BOUND_COLUMNS

__all__ = ["vacuous_hint", "suggested_top_k"]


def suggested_top_k(n_train: int) -> int:
    """A power of two near half the training sentences, between 16 and 512.

    Rule of thumb, not a law: each kept id should appear in enough training bags for the probe to
    learn its weights; the demo's 720 training sentences bound ``top:512`` and, by this rule, 256.
    """
    k = 16
    while k * 2 <= max(n_train // 2, 16) and k < 512:
        k *= 2
    return k


def vacuous_hint(result) -> str | None:
    """One line naming a ``top:K`` when most layers of a model have no bound above zero, else None."""
    lines = []
    for model in result.models:
        rows = [r for r in result.table if r["model"] == model]
        if not rows or any(r.get("clamped") is None for r in rows):
            continue
        empty = [r for r in rows if set(LOWER_BOUND_COLUMNS) <= set((r.get("clamped") or "").split(","))]
        if 2 * len(empty) <= len(rows):
            continue
        n_train = max(int(r.get("n_train") or 0) for r in rows)
        alphabet = max(int(r.get("M") or 0) for r in rows)
        k = suggested_top_k(n_train)
        what = (
            f"hint: no lower bound is above zero at {len(empty)} of {len(rows)} layers of {model}: "
            f"{n_train} training sentences cannot teach a probe the alphabet vocab={rows[0].get('vocab')} "
            f"(M={alphabet} ids)."
        )
        if k < alphabet:
            what += (
                f" Try --vocab top:{k} (the {k - 1} most frequent ids plus 'other', a bound on "
                "I(f(T); z) <= I(T; z)) or a larger corpus."
            )
        else:
            what += " Try a larger corpus."
        lines.append(what)
    return "\n".join(lines) or None
