"""Sample-size curves: the bounds of each layer against the number of sentences the probe trained on.

A lower bound from a probe is limited by the layer (what is in z) and by the probe (what it could
learn from n_train sentences).  Refitting on nested subsets of the training rows, each scored on the
same held-out rows, shows which one binds: a bound still rising at the full n_train would rise
further with more data, so the layer keeps at least that much and probably more.

``data_limited`` (per layer): the last step of the curve (a doubling with the default fractions)
raised the variational bound by more than the half-width of its confidence band, i.e. more than
the distance from the point value to the lower confidence value at the full n_train.  Such a
layer's bound is set by the corpus size, not by the model; differences between data-limited layers
say more about how easy each layer is to learn from than about what it keeps (docs/theory.md §3:
any decoder gives a valid bound, a better-trained one a tighter bound).

The rise is measured on unclamped values (H(T) - CE), so a layer whose bound is still vacuous but
climbing is flagged too.  The subsets are nested (each the head of one seeded permutation of the
training rows), so a curve moves only because rows were added; validation rows (early stopping)
and held-out rows are the same at every point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fastmi.data.bags import BagTargets
from fastmi.probe.checks import DEFAULT_CURVE, check_curve
from fastmi.probe.config import ProbeConfig
from fastmi.probe.evaluation import score_probes
from fastmi.probe.heads import fit_heads
from fastmi.results.columns import CURVE_COLUMNS
from fastmi.stats import bounds

__all__ = [
    "DEFAULT_CURVE",
    "check_curve",
    "nested_subsets",
    "fit_curve_points",
    "finish_curves",
    "is_data_limited",
    "draw_curves",
    "shown_layers",
    "CURVE_COLUMNS",
]


def nested_subsets(n_train: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Positions into the training rows for each fraction below 1: heads of one seeded permutation."""
    order = np.random.default_rng([seed, 0x6375]).permutation(n_train)  # own stream: not the split's
    subsets = []
    for f in fractions:
        if f >= 1.0:
            continue
        size = int(round(f * n_train))
        if size < 1:
            raise ValueError(f"curve fraction {f} of {n_train} training sentences leaves none; raise it")
        subsets.append(np.sort(order[:size]))
    return subsets


def _point(model: str, layer: int, fraction: float, n_train: int, values: dict, form: str | None) -> dict:
    return {
        "model": model,
        "layer": int(layer),
        "fraction": float(fraction),
        "n_train": int(n_train),
        **{c: float(values[c]) for c in CURVE_COLUMNS},
        **({"probe": form} if form else {}),
    }


def fit_curve_points(
    z: torch.Tensor,
    index: dict[str, torch.Tensor],
    bags: dict[str, BagTargets],
    alphabet_size: int,
    layers: Sequence[int],
    model: str,
    entropy_bits: Any,
    config: ProbeConfig,
    progress: bool = True,
    fit: Callable[..., Any] = fit_heads,
    probe: str | None = None,
) -> list[dict]:
    """Refit the probes of one layer group (``z`` [L, N, d], standardised) on each fraction below 1
    of the training rows (``config.curve``); score each on all held-out rows.  ``index``/``bags``:
    rows and bags of the "train", "validation" and "test" parts, as in :func:`fastmi.recoverability`.
    ``fit``: the probe's own fitting function (:func:`fastmi.probe.heads.fit_heads` with its settings
    bound), so every point of a curve is the same kind of probe as the full fit; under probe="auto"
    (:func:`fastmi.probe.form_choice.fit_forms`) each point keeps the form better on validation at its
    size, named in the point's "probe" (elsewhere ``probe``, the form ``fit`` trains).

    Every point starts cold.  Starting each from the smaller point before it was measured slower and
    looser (docs/performance.md): a smaller subset's early-stopped probe has fitted that subset's
    noise, and early stopping keeps what the start brought."""
    fractions, seed = config.curve or (), config.seed
    points: list[dict] = []
    n_train = int(index["train"].numel())
    z_val, z_test = z[:, index["validation"]], z[:, index["test"]]
    below_one = [f for f in fractions if f < 1.0]
    for fraction, positions in zip(below_one, nested_subsets(n_train, fractions, seed)):
        rows = index["train"][torch.as_tensor(positions, device=index["train"].device)]
        fitted = fit(
            z[:, rows],
            bags["train"].select(positions),
            z_val,
            bags["validation"],
            alphabet_size,
            config.train,
            seed=seed,
            progress=progress,
            description=f"{model} layers {layers[0]}-{layers[-1]}, n_train={positions.size}",
        )
        scores = score_probes(
            fitted.features(z_test), fitted.weight, fitted.bias, bags["test"], alphabet_size, config.k
        )
        for i, layer in enumerate(layers):
            values = bounds.layer_bounds(
                scores.errors[i].numpy(),
                scores.errors_k[i].numpy(),
                scores.ce_bits[i].numpy(),
                getattr(entropy_bits, "point", entropy_bits),
                alphabet_size,
                config.k,
                level=config.level,
                seed=seed,
                n_bootstrap=config.n_bootstrap,
                entropy=entropy_bits if hasattr(entropy_bits, "draws") else None,
            )
            form = fitted.form[i] if getattr(fitted, "form", None) else probe
            points.append(_point(model, layer, fraction, positions.size, values, form))
    return points


def is_data_limited(points: Sequence[dict]) -> bool:
    """Whether the last step of one layer's curve raised its variational bound by more than the
    half-width of its confidence band at the full n_train (unclamped: H(T) - CE)."""
    ordered = sorted(points, key=lambda p: p["n_train"])
    if len(ordered) < 2:
        raise ValueError("a curve needs at least two points to say whether it still rises")
    before, last = ordered[-2], ordered[-1]
    rise = before["ce_bits"] - last["ce_bits"]
    half_width = last["ce_bits_ucb"] - last["ce_bits"]
    return bool(rise > half_width)


def finish_curves(rows: list[dict], points: list[dict]) -> list[dict]:
    """Add each row's own fit as the curve's last point (fraction 1) and set ``data_limited`` on rows."""
    points = list(points)
    for row in rows:
        points.append(_point(row["model"], row["layer"], 1.0, row["n_train"], row, row.get("probe")))
    for row in rows:
        mine = [p for p in points if p["model"] == row["model"] and p["layer"] == row["layer"]]
        row["data_limited"] = is_data_limited(mine)
    return sorted(points, key=lambda p: (p["model"], p["layer"], p["n_train"]))


def draw_curves(
    figure: Any, result: Any, models: Sequence[str], fraction: bool, colors: Sequence, per_row: int = 4
) -> list:
    """The sample-size panels, one per model in ``models`` (``per_row`` side by side), on ``figure``
    (a matplotlib Figure or SubFigure); returns their axes.

    A panel draws a few layers, not all of them: told apart only by shade, 30 lines of one colour
    cannot be read.  The first, the peak (highest bound at the full n_train), the middle and the last
    layer (:func:`shown_layers`), each in its own colour and named in the panel's legend with whether
    it is data_limited (solid) or not (dotted); the band is the lower confidence value.  The title
    counts the model's data-limited layers, all of them.
    """
    columns = ("variational_frac", "variational_lcb_frac") if fraction else ("variational_bits", "variational_lcb")
    rows = -(-len(models) // per_row)
    axes = figure.subplots(rows, min(len(models), per_row), sharey=True, squeeze=False).ravel()
    for ax in axes[len(models) :]:
        ax.remove()
    for ax, model in zip(axes, models):
        i = list(result.models).index(model)
        _draw_model_curves(ax, result, model, columns, colors[i % len(colors)])
    for ax in axes[: len(models) : min(len(models), per_row)]:
        ax.set_ylabel("variational bound, fraction of H(T)" if fraction else "variational bound [bits]")
    return list(axes[: len(models)])


_ROLE_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")  # Dark2: apart from the models' tab10 colours


def shown_layers(points: Sequence[dict], column: str = "variational_bits") -> list[tuple[int, str]]:
    """``[(layer, role), ...]`` drawn for one model's curve points, by layer: the first, the peak
    (highest ``column`` at its largest n_train), the middle and the last; a layer with two roles is
    named once with both, so there are at most four."""
    layers = sorted({p["layer"] for p in points})
    if not layers:
        return []
    at_full = {}
    for p in sorted(points, key=lambda p: p["n_train"]):
        at_full[p["layer"]] = p[column]  # the largest n_train wins
    peak = max(layers, key=lambda layer: (at_full[layer], -layer))
    roles: dict[int, list[str]] = {}
    middle = layers[len(layers) // 2]
    for layer, role in ((layers[0], "first"), (peak, "peak"), (middle, "middle"), (layers[-1], "last")):
        roles.setdefault(layer, []).append(role)
    return [(layer, ", ".join(names)) for layer, names in sorted(roles.items())]


def _draw_model_curves(ax: Any, result: Any, model: str, columns: tuple[str, str], model_color) -> None:
    point, lcb = columns
    mine = [p for p in result.curves if p["model"] == model]
    limited = {r["layer"]: bool(r.get("data_limited")) for r in result.table if r["model"] == model}
    for j, (layer, role) in enumerate(shown_layers(mine, point)):
        line = sorted((p for p in mine if p["layer"] == layer), key=lambda p: p["n_train"])
        n = [p["n_train"] for p in line]
        color = _ROLE_COLORS[j % len(_ROLE_COLORS)]
        ax.fill_between(n, [p[lcb] for p in line], [p[point] for p in line], color=color, alpha=0.15, linewidth=0)
        ax.plot(
            n,
            [p[point] for p in line],
            color=color,
            linewidth=1.8,
            marker="o",
            markersize=3.5,
            linestyle="-" if limited.get(layer) else ":",
            label=f"layer {layer} ({role})" + (", data_limited" if limited.get(layer) else ""),
        )
    count = sum(limited.values())
    ax.set_title(f"{model}: {count} of {len(limited)} layers data_limited", fontsize=10, color=model_color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training sentences (n_train)")
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    ax.grid(True, alpha=0.3)
