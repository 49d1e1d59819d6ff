"""The plot: a bound vacuous at every layer is said in words, not drawn as a flat line at 0 (nor given
a panel when it is so for every model); sample-size curves are small panels of a few named layers."""

from __future__ import annotations

import numpy as np
import pytest

from fastmi.probe.curves import CURVE_COLUMNS, shown_layers
from fastmi.results.plot import bounds_figure
from fastmi.results.result import RecoverabilityResult
from fastmi.stats.bounds import layer_bounds


def rows_for(model: str, layers: int, p_error: float, M: int, seed: int) -> list[dict]:
    """Real bounds from random per-sentence statistics; a top-1 error near ``p_error``."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(layers + 1):
        errors = np.clip(p_error + 0.05 * rng.standard_normal(80), 0, 1)
        bounds = layer_bounds(errors, errors * 0.5, 1 + rng.random(80), 6.5, M, 5, n_bootstrap=200)
        rows.append(
            dict(model=model, layer=layer, rel_depth=layer / layers, vocab="observed", M=M, n_test=80, **bounds)
        )
    return rows


def panel_texts(figure, title_start: str) -> tuple[list[str], int]:
    ax = next(a for a in figure.axes if a.get_title().startswith(title_start))
    return [t.get_text() for t in ax.texts], len(ax.lines)


def curve_points(rows: list[dict], fractions=(0.25, 0.5)) -> list[dict]:
    """Sample-size points below the full fit, rising with n_train, for every row's layer."""
    points = []
    for row in rows:
        for f in fractions:
            values = {c: row.get(c, 0.0) for c in CURVE_COLUMNS}
            values.update(variational_bits=row["variational_bits"] * f, variational_lcb=row["variational_lcb"] * f)
            points.append(dict(model=row["model"], layer=row["layer"], fraction=f, n_train=int(400 * f), **values))
    return points


def test_a_bound_vacuous_for_every_model_is_a_line_under_the_title_not_a_panel():
    # top-1 error 0.75 over 5000 symbols: Fano is far below zero at every layer of both models
    result = RecoverabilityResult(rows_for("a", 3, 0.75, 5000, 0) + rows_for("b", 4, 0.75, 5000, 1))
    assert all("fano_bits" in r["clamped"].split(",") for r in result.table)
    for fraction in (False, True):
        figure = bounds_figure(result, fraction=fraction)
        # Both Fano bounds are vacuous everywhere: two panels that would only say so, now one line.
        assert [ax.get_title() for ax in figure.axes] == ["variational (cross-entropy)"]
        note = figure.get_suptitle().splitlines()[-1]
        assert note == "not drawn (vacuous at every layer of every model): Fano (top-1) and list-decoding Fano (top-5)"
        texts, lines = panel_texts(figure, "variational")
        assert not any("vacuous" in t for t in texts) and lines >= 2  # informative: drawn as before


def test_a_bound_vacuous_everywhere_requested_alone_keeps_its_panel():
    result = RecoverabilityResult(rows_for("a", 3, 0.75, 5000, 0))
    figure = bounds_figure(result, bound="fano")
    assert len(figure.axes) == 1  # a figure of nothing would say less than the one sentence
    texts, lines = panel_texts(figure, "Fano")
    assert "vacuous at every layer" in texts and lines == 1  # the H(T) ceiling only
    assert "not drawn" not in figure.get_suptitle()


def test_curves_are_one_small_panel_per_model_with_a_few_labelled_layers(tmp_path):
    """30 layers of one model were 30 lines told apart by shade: now a handful, each named."""
    rows = rows_for("deep", 30, 0.75, 5000, 0) + rows_for("shallow", 6, 0.75, 5000, 1)
    for row in rows:
        row["data_limited"] = row["layer"] % 2 == 0
    result = RecoverabilityResult(rows, curves=curve_points(rows))
    figure = bounds_figure(result)
    bound_panels = [ax for ax in figure.axes if "relative depth" in ax.get_xlabel()]
    curve_panels = [ax for ax in figure.axes if "n_train" in ax.get_xlabel()]
    # Variational and one panel per model; both Fano bounds (vacuous everywhere) are the note.
    assert len(figure.axes) == 3 and len(bound_panels) == 1 and "not drawn" in figure.get_suptitle()
    assert [ax.get_title() for ax in curve_panels] == [
        "deep: 16 of 31 layers data_limited",
        "shallow: 4 of 7 layers data_limited",
    ]
    for ax in curve_panels:
        labels = [line.get_label() for line in ax.get_legend().get_lines()]
        assert 2 <= len(ax.lines) == len(labels) <= 4
        assert labels[0].startswith("layer 0 (first") and "(last" in labels[-1]
        assert any("peak" in label for label in labels)
    assert "layer 30 (last), data_limited" in [t.get_text() for t in curve_panels[0].get_legend().get_texts()]
    path = result.plot(tmp_path / "curves.png")
    assert path.stat().st_size > 10_000


def test_shown_layers_names_first_peak_middle_last_once_each():
    points = [
        dict(layer=layer, n_train=n, variational_bits=b)
        for layer, n, b in [
            (0, 100, 0.1),
            (0, 200, 0.2),
            (1, 200, 0.9),
            (2, 200, 0.5),
            (3, 200, 0.4),
            (4, 200, 0.3),
            (4, 100, 0.9),
        ]
    ]
    assert shown_layers(points) == [(0, "first"), (1, "peak"), (2, "middle"), (4, "last")]
    assert shown_layers([p for p in points if p["layer"] in (0, 4)]) == [(0, "first"), (4, "peak, middle, last")]


def test_one_vacuous_model_is_named_and_the_other_still_drawn():
    result = RecoverabilityResult(rows_for("a", 3, 0.75, 5000, 0) + rows_for("b", 3, 0.02, 20, 1))
    vacuous_b = [r for r in result.table if r["model"] == "b" and "fano_bits" in r["clamped"]]
    assert not vacuous_b
    texts, lines = panel_texts(bounds_figure(result, bound="fano"), "Fano")
    assert texts and texts[0].startswith("vacuous at every layer") and "a" in texts[0].splitlines()
    assert "b" not in texts[0].splitlines()
    assert lines == 1 + 2  # b's bound, and the two ceilings


@pytest.mark.parametrize("bound", ["fano", "list_fano", "variational"])
def test_no_panel_text_when_nothing_is_vacuous(bound):
    result = RecoverabilityResult(rows_for("b", 3, 0.02, 20, 1))
    texts, _ = panel_texts(
        bounds_figure(result, bound=bound), {"fano": "Fano", "list_fano": "list", "variational": "variational"}[bound]
    )
    assert not any("vacuous" in t for t in texts)
