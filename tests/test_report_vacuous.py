"""Fano panels: a bound vacuous at every layer is said in words, not drawn as a flat line at 0."""

from __future__ import annotations

import numpy as np
import pytest

from fastmi.bounds import layer_bounds
from fastmi.report import bounds_figure
from fastmi.result import RecoverabilityResult


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


def test_a_bound_vacuous_for_every_model_says_so_and_draws_no_line():
    # top-1 error 0.75 over 5000 symbols: Fano is far below zero at every layer of both models
    result = RecoverabilityResult(rows_for("a", 3, 0.75, 5000, 0) + rows_for("b", 4, 0.75, 5000, 1))
    assert all("fano_bits" in r["clamped"].split(",") for r in result.table)
    for fraction in (False, True):
        figure = bounds_figure(result, fraction=fraction)
        texts, lines = panel_texts(figure, "Fano")
        assert "vacuous at every layer" in texts
        assert lines <= 2  # the H(T) ceilings (or the line at 1) only, no bound lines
        texts, lines = panel_texts(figure, "variational")
        assert not any("vacuous" in t for t in texts) and lines >= 2  # informative: drawn as before


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
