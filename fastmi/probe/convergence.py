"""Say so when a probe was stopped by the epoch cap while its validation loss was still falling.

Such a probe is under-trained: its cross-entropy is higher than it would become, so its bounds are
lower than they could be (still valid lower bounds, only looser).  The table's ``converged``
column records it per layer; this module prints one line naming the layers and the fix.
"""

from __future__ import annotations

__all__ = ["warn_unconverged"]


def warn_unconverged(model: str, rows: list[dict], max_epochs: int) -> list[int]:
    """One plain line if some layers of ``rows`` did not converge; returns those layers."""
    from fastmi.activations.cache import format_layers
    from fastmi.runtime.notices import notice

    layers = sorted(int(r["layer"]) for r in rows if r.get("converged") is False)
    if layers:
        notice(
            f"{model}: the probe of layer(s) {format_layers(layers)} ({len(layers)} of {len(rows)}) was still "
            f"improving when it reached max_epochs={max_epochs}; its bounds are valid but looser than they "
            f"could be: rerun with --max-epochs {2 * max_epochs} (see the converged column)"
        )
    return layers
