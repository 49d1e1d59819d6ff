"""fastmi.results.columns: the result's column names, declared once and used by everything that
computes, writes, shows or reads them."""

from __future__ import annotations

import numpy as np

from fastmi.results import columns
from fastmi.stats.bounds import layer_bounds


def test_every_derived_name_is_a_column():
    for group in (columns.BOUND_COLUMNS, columns.FRACTION_COLUMNS, columns.LOWER_BOUND_COLUMNS, columns.ESTIMATES):
        assert set(group) <= set(columns.COLUMNS), group
    assert {columns.ucb_column(e) for e in columns.ESTIMATES} <= set(columns.COLUMNS)
    assert set(columns.CURVE_COLUMNS) <= set(columns.COLUMNS)
    shown = set(columns.TERMINAL_COLUMNS) - {"data_limited", "converged"}  # added by curves and convergence
    assert shown <= set(columns.COLUMNS)
    assert set(columns.BOOL_COLUMNS) == {"data_limited", "converged"}


def test_layer_bounds_computes_exactly_the_bound_columns():
    rng = np.random.default_rng(0)
    errors = (rng.random(50) < 0.4).astype(float)
    out = layer_bounds(errors, errors * 0.5, 1 + rng.random(50), 6.0, 100, 5, n_bootstrap=200)
    expected = {"H_T", "k", "level", "clamped", *columns.ESTIMATES, *columns.BOUND_COLUMNS, *columns.FRACTION_COLUMNS}
    expected |= {columns.ucb_column(e) for e in columns.ESTIMATES}
    assert set(out) == expected
    assert [c for c in columns.COLUMNS if c in out] == [c for c in columns.COLUMNS if c in expected]


def test_a_shown_fraction_is_vacuous_when_its_bound_was_clamped():
    assert columns.bound_column("variational_lcb_frac") == "variational_lcb"
    assert columns.bound_column("list_fano_frac") == "list_fano_bits"
    assert columns.bound_column("fano_lcb") == "fano_lcb"


def test_modules_take_their_names_from_here():
    import fastmi.results.plot as plot
    import fastmi.results.result as result
    import fastmi.stats.bounds as bounds
    from fastmi.probe.curves import CURVE_COLUMNS

    assert result.COLUMNS is columns.COLUMNS and result.TERMINAL_COLUMNS is columns.TERMINAL_COLUMNS
    assert bounds.BOUNDS is columns.BOUNDS and plot.BOUNDS is columns.BOUNDS
    assert tuple(CURVE_COLUMNS) == columns.CURVE_COLUMNS
