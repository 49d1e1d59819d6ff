"""Plots of a :class:`~fastmi.result.RecoverabilityResult`: bounds against relative depth.

One line per model (the point value, a marker per layer), the band between the lower confidence
value and the point value shaded, and the H(T) ceiling dashed in the model's colour (a single
dashed line at 1 when plotting fractions of H(T)).  matplotlib runs on the Agg backend: no display
is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from fastmi.bounds import BOUNDS  # noqa: E402

__all__ = ["bounds_figure", "plot_bounds", "PLOT_BOUNDS"]

PLOT_BOUNDS = (*BOUNDS, "all")
_TITLES = {
    "fano": "Fano (top-1 error)",
    "list_fano": "list-decoding Fano (top-{k} error)",
    "variational": "variational (cross-entropy)",
}


def _columns(bound: str, fraction: bool) -> tuple[str, str]:
    point, lcb = BOUNDS[bound]
    if fraction:
        return point.removesuffix("_bits") + "_frac", lcb + "_frac"
    return point, lcb


def _distinct(rows: list[dict], column: str) -> str:
    values = list(dict.fromkeys(str(r[column]) for r in rows if r.get(column) not in (None, "")))
    return "/".join(values) if values else "?"


def _model_label(rows: list[dict], model: str) -> str:
    mine = [r for r in rows if r["model"] == model]
    return f"{model} (M={_distinct(mine, 'M')}, H(T)={max(r['H_T'] for r in mine):.2f} bits)"


def _vacuous_everywhere(rows: list[dict], bound: str) -> bool:
    """Whether ``bound``'s point value was clamped at 0 (the bound says nothing) at every layer."""
    point = BOUNDS[bound][0]
    return bool(rows) and all(point in (r.get("clamped") or "").split(",") for r in rows)


def bounds_figure(result, bound: str = "all", fraction: bool = False) -> Figure:
    """The figure :func:`plot_bounds` saves, for callers that want to adjust or embed it."""
    if bound not in PLOT_BOUNDS:
        raise ValueError(f"bound must be one of {PLOT_BOUNDS}, got {bound!r}")
    rows = result.table
    if not rows:
        raise ValueError("nothing to plot: the result has no rows")
    if any(r.get("rel_depth") is None for r in rows):
        raise ValueError("every row needs rel_depth to be plotted against relative depth")
    bounds = list(BOUNDS) if bound == "all" else [bound]
    for name in bounds:
        for column in (*_columns(name, fraction), "H_T"):
            if any(r.get(column) is None for r in rows):
                raise ValueError(f"cannot plot {name!r}: some rows have no {column!r}")

    # When every bound sits far below the ceiling (large alphabets, small corpora), a full-height
    # axis flattens the curves into the floor: zoom on the data and name the ceiling instead.
    data_top = max(r[_columns(name, fraction)[0]] for name in bounds for r in rows)
    ceiling_top = 1.0 if fraction else max(r["H_T"] for r in rows)
    zoomed = 0 < data_top < ceiling_top / 3
    colors = plt.get_cmap("tab10").colors
    panels = len(bounds) + (1 if getattr(result, "curves", None) else 0)  # + the sample-size curves
    fig, axes = plt.subplots(1, panels, figsize=(max(8.5, 5.0 * panels + 0.6), 4.6), sharey=True, squeeze=False)
    if panels > len(bounds):
        from fastmi.curves import draw_curves

        draw_curves(axes[0][-1], result, fraction, colors)
    for ax, name in zip(axes[0], bounds):
        point_col, lcb_col = _columns(name, fraction)
        vacuous = []  # models whose bound is clamped at 0 at every layer: a line at 0 would hide another
        for i, model in enumerate(result.models):
            model_rows = sorted((r for r in rows if r["model"] == model), key=lambda r: r["rel_depth"])
            x = [r["rel_depth"] for r in model_rows]
            point = [r[point_col] for r in model_rows]
            lcb = [r[lcb_col] for r in model_rows]
            color = colors[i % len(colors)]
            if _vacuous_everywhere(model_rows, name):
                vacuous.append(model)
            else:
                ax.fill_between(x, lcb, point, color=color, alpha=0.22, linewidth=0)
                ax.plot(x, point, color=color, marker="o", markersize=3.5, linewidth=1.8, label=model)
            if not fraction:
                ceiling = max(r["H_T"] for r in model_rows)
                ax.plot([0, 1], [ceiling, ceiling], color=color, linestyle="--", linewidth=1.1)
        if fraction:
            ax.plot([0, 1], [1, 1], color="0.35", linestyle="--", linewidth=1.1)
        if vacuous:
            everyone = len(vacuous) == len(result.models)
            text = "vacuous at every layer" + ("" if everyone else ":\n" + "\n".join(vacuous))
            ax.text(
                0.5,
                0.5 if everyone else 0.9,
                text,
                transform=ax.transAxes,
                ha="center",
                va="center" if everyone else "top",
                fontsize=11 if everyone else 9,
                color="0.3",
            )
        k = _distinct([r for r in rows if r.get("k") is not None], "k") if name == "list_fano" else ""
        ax.set_title(_TITLES[name].format(k=k), fontsize=11)
        ax.set_xlabel("relative depth (layer / number of layers)")
        ax.set_xlim(-0.02, 1.02)
        if zoomed:
            ax.set_ylim(0, data_top * 1.25)
            ax.text(
                0.98,
                0.97,
                "H(T) ceiling off scale",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=8,
                color="0.35",
            )
        else:
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("recoverable fraction of H(T)" if fraction else "lower bound on I(T; z) [bits]")

    level = _distinct(rows, "level")
    level_text = f"{float(level):.0%}" if "/" not in level and level != "?" else level
    handles = [
        Line2D(
            [],
            [],
            color=colors[i % len(colors)],
            marker="o",
            markersize=3.5,
            linewidth=1.8,
            label=_model_label(rows, m),
        )
        for i, m in enumerate(result.models)
    ]
    handles += [
        Patch(color="0.5", alpha=0.3, label=f"{level_text} lower confidence band"),
        Line2D(
            [],
            [],
            color="0.35",
            linestyle="--",
            label="H(T) ceiling" + (" (= 1)" if fraction else "") + (", off scale" if zoomed else ""),
        ),
    ]
    per_row = 2 if len(bounds) == 1 else 4
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), per_row), frameon=False, fontsize=9)
    what = "recoverable fraction of H(T)" if fraction else "lower bounds on I(T; z), T = a random token of the sentence"
    fig.suptitle(
        f"{what}\nvocab={_distinct(rows, 'vocab')}, pooling={_distinct(rows, 'pooling')}, "
        f"held-out sentences={_distinct(rows, 'n_test')}, confidence level {level_text}",
        fontsize=11,
    )
    legend_rows = -(-len(handles) // per_row)
    fig.tight_layout(rect=(0, 0.01 + 0.055 * legend_rows, 1, 1))
    return fig


def plot_bounds(result, path: str | os.PathLike, bound: str = "all", fraction: bool = False) -> Path:
    """Write the bounds of ``result`` against relative depth as a PNG at ``path``; returns the path."""
    path = Path(path)
    fig = bounds_figure(result, bound=bound, fraction=fraction)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
        fig.savefig(tmp, dpi=130)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
