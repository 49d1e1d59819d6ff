"""Say so when a probe stopped before its validation loss had stopped falling.

* By the epoch cap: such a probe is under-trained, its cross-entropy higher than it would become, so
  its bounds are lower than they could be (still valid lower bounds, only looser).  The table's
  ``converged`` column records it per layer.
* By the patience, on a plateau: then the probe seeds disagree, since one seed stops on a plateau
  that another crosses.  At SmolLM2's middle layers patience 3 left seeds 0.06-0.07 bit apart
  and 0.07-0.14 bit below what patience 6 reached (docs/performance.md, "Early stopping's
  patience"); elsewhere seeds agree to about 0.01 bit.

Each prints one line naming the layers and the fix.
"""

from __future__ import annotations

__all__ = ["warn_unconverged", "warn_seed_spread", "SEED_SPREAD_BITS"]

# Seeds further apart than this (variational_seed_sd, bits) are told to try a longer patience: twice
# the spread where the demo's seeds agreed, half of where a longer patience helped.
SEED_SPREAD_BITS = 0.03


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


def warn_seed_spread(model: str, rows: list[dict], patience: int) -> list[int]:
    """One plain line if the probe seeds of some layers of ``rows`` are more than
    :data:`SEED_SPREAD_BITS` apart; returns those layers (none with a single seed)."""
    from fastmi.activations.cache import format_layers
    from fastmi.runtime.notices import notice

    spread = {int(r["layer"]): float(r["variational_seed_sd"]) for r in rows if r.get("variational_seed_sd")}
    layers = sorted(layer for layer, sd in spread.items() if sd > SEED_SPREAD_BITS)
    if layers:
        notice(
            f"{model}: the probe seeds of layer(s) {format_layers(layers)} ({len(layers)} of {len(rows)}) are up to "
            f"{max(spread[layer] for layer in layers):.3f} bit apart (variational_seed_sd): early stopping at "
            f"patience={patience} can end a seed on a plateau that another crosses; the intervals carry the "
            f"spread, and --patience {2 * patience} usually narrows it and raises the bound"
        )
    return layers
