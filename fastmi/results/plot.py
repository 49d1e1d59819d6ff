"""Plots of a :class:`~fastmi.results.result.RecoverabilityResult`: bounds against relative depth.

One line per model (the point value, a marker per layer), the band between the lower confidence
value and the point value shaded, and the H(T) ceiling dashed in the model's colour (a single
dashed line at 1 when plotting fractions of H(T)).  A bound vacuous at every layer of every model
is a line under the title, not a panel; sample-size curves, when the result has them, are a second
row of small panels, one per model.  matplotlib runs on the Agg backend: no display is needed.
"""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from fastmi.results.columns import BOUNDS, fraction_column  # noqa: E402
from fastmi.runtime.files import atomic_write_bytes  # noqa: E402

__all__ = ["bounds_figure", "plot_bounds", "PLOT_BOUNDS"]

PLOT_BOUNDS = (*BOUNDS, "all")
_TITLES = {
    "fano": "Fano (top-1 error)",
    "list_fano": "list-decoding Fano (top-{k} error)",
    "variational": "variational (cross-entropy)",
}


def _columns(bound: str, fraction: bool) -> tuple[str, str]:
    point, lcb = BOUNDS[bound]
    return (fraction_column(point), fraction_column(lcb)) if fraction else (point, lcb)


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


def _folded_note(folded: list[str], rows: list[dict]) -> str:
    """One line for the bounds left out of the figure because they say nothing anywhere."""
    k = _distinct([r for r in rows if r.get("k") is not None], "k")
    short = {"fano": "Fano (top-1)", "list_fano": f"list-decoding Fano (top-{k})", "variational": "variational"}
    return f"not drawn (vacuous at every layer of every model): {' and '.join(short[name] for name in folded)}"


def bounds_figure(result, bound: str = "all", fraction: bool = False) -> Figure:
    """The figure :func:`plot_bounds` saves, for callers that want to adjust or embed it.

    One panel per bound against relative depth; a bound vacuous at every layer of every model gets
    no panel, only a line under the title (a panel that says one sentence is a quarter of the figure
    spent on nothing).  With sample-size curves, a second row holds one small panel per model
    (:func:`fastmi.probe.curves.draw_curves`).
    """
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
    folded = [name for name in bounds if _vacuous_everywhere(rows, name)]
    drawn = [name for name in bounds if name not in folded] or [bounds[-1]]  # a figure keeps one panel
    folded = [name for name in folded if name not in drawn]
    curve_models = _models_with_curves(result)

    colors = plt.get_cmap("tab10").colors
    width = max(8.5, 5.0 * max(len(drawn), min(len(curve_models), _CURVES_PER_ROW)) + 0.6)
    curve_rows = -(-len(curve_models) // _CURVES_PER_ROW)
    fig = plt.figure(figsize=(width, 5.2 + 3.6 * curve_rows), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[5.2, 3.6 * curve_rows]) if curve_models else (fig, None)
    axes = top.subplots(1, len(drawn), sharey=True, squeeze=False)[0]
    zoomed = _draw_bound_panels(axes, result, drawn, fraction, colors)
    if bottom is not None:
        from fastmi.probe.curves import draw_curves

        draw_curves(bottom, result, curve_models, fraction, colors, per_row=_CURVES_PER_ROW)

    handles = _legend_handles(result, rows, colors, fraction, zoomed)
    per_row = 2 if len(drawn) == 1 else 4
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), per_row), frameon=False, fontsize=9)
    fig.suptitle(_title(rows, fraction, folded, width), fontsize=11)
    return fig


def _title(rows: list[dict], fraction: bool, folded: list[str], width: float) -> str:
    what = "recoverable fraction of H(T)" if fraction else "lower bounds on I(T; z), T = a random token of the sentence"
    lines = [
        what,
        f"vocab={_distinct(rows, 'vocab')}, pooling={_distinct(rows, 'pooling')}, "
        f"held-out sentences={_distinct(rows, 'n_test')}, confidence level {_level_text(rows)}",
    ]
    if folded:  # wrapped to the figure's width (about 11 characters an inch at this size)
        lines.append(textwrap.fill(_folded_note(folded, rows), width=int(11.5 * width)))
    return "\n".join(lines)


_CURVES_PER_ROW = 4  # sample-size panels side by side before they wrap


def _models_with_curves(result) -> list[str]:
    curves = getattr(result, "curves", None) or []
    with_points = {p["model"] for p in curves}
    return [m for m in result.models if m in with_points]


def _level_text(rows: list[dict]) -> str:
    level = _distinct(rows, "level")
    return f"{float(level):.0%}" if "/" not in level and level != "?" else level


def _draw_bound_panels(axes, result, bounds: list[str], fraction: bool, colors) -> bool:
    """Each bound against relative depth on its axis; returns whether the y axis is zoomed."""
    rows = result.table
    # When every bound sits far below the ceiling (large alphabets, small corpora), a full-height
    # axis flattens the curves into the floor: zoom on the data and name the ceiling instead.
    data_top = max(r[_columns(name, fraction)[0]] for name in bounds for r in rows)
    ceiling_top = 1.0 if fraction else max(r["H_T"] for r in rows)
    zoomed = 0 < data_top < ceiling_top / 3
    for ax, name in zip(axes, bounds):
        _draw_bound(ax, result, name, fraction, colors)
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
    axes[0].set_ylabel("recoverable fraction of H(T)" if fraction else "lower bound on I(T; z) [bits]")
    return zoomed


def _draw_bound(ax, result, name: str, fraction: bool, colors) -> None:
    """One bound of every model: point line, confidence band, H(T) ceiling; models vacuous at every
    layer are named in words (a line at 0 would hide another model's)."""
    point_col, lcb_col = _columns(name, fraction)
    vacuous = []
    for i, model in enumerate(result.models):
        model_rows = sorted((r for r in result.table if r["model"] == model), key=lambda r: r["rel_depth"])
        x = [r["rel_depth"] for r in model_rows]
        color = colors[i % len(colors)]
        if _vacuous_everywhere(model_rows, name):
            vacuous.append(model)
        else:
            ax.fill_between(
                x,
                [r[lcb_col] for r in model_rows],
                [r[point_col] for r in model_rows],
                color=color,
                alpha=0.22,
                linewidth=0,
            )
            ax.plot(
                x,
                [r[point_col] for r in model_rows],
                color=color,
                marker="o",
                markersize=3.5,
                linewidth=1.8,
                label=model,
            )
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


def _legend_handles(result, rows: list[dict], colors, fraction: bool, zoomed: bool) -> list:
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
        Patch(color="0.5", alpha=0.3, label=f"{_level_text(rows)} lower confidence band"),
        Line2D(
            [],
            [],
            color="0.35",
            linestyle="--",
            label="H(T) ceiling" + (" (= 1)" if fraction else "") + (", off scale" if zoomed else ""),
        ),
    ]
    return handles


def plot_bounds(result, path: str | os.PathLike, bound: str = "all", fraction: bool = False) -> Path:
    """Write the bounds of ``result`` against relative depth as a PNG at ``path``; returns the path."""
    path = Path(path)
    fig = bounds_figure(result, bound=bound, fraction=fraction)
    try:
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=130)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, png.getvalue())
    return path
