"""The column names of a result's table, declared once.

:func:`fastmi.stats.bounds.layer_bounds` computes them, :class:`~fastmi.results.result.RecoverabilityResult`
orders, types and writes them (CSV, JSON), the plot and the hints read them.  What each one means is
in docs/theory.md.  The order of :data:`COLUMNS` is the order of every CSV written so far: append,
never reorder.  The groups below it (:data:`BOUND_COLUMNS` ...) are derived from :data:`BOUNDS`,
and tests/test_columns.py checks that every derived name is a column.
"""

from __future__ import annotations

__all__ = [
    "BOUNDS",
    "ESTIMATES",
    "BOUND_COLUMNS",
    "FRACTION_COLUMNS",
    "LOWER_BOUND_COLUMNS",
    "COLUMNS",
    "TERMINAL_COLUMNS",
    "CURVE_COLUMNS",
    "SEED_COLUMNS",
    "STR_COLUMNS",
    "BOOL_COLUMNS",
    "INT_COLUMNS",
    "fraction_column",
    "bound_column",
    "ucb_column",
]

#: The reported bounds: name -> (point column, lower-confidence column), in bits.
BOUNDS = {
    "fano": ("fano_bits", "fano_lcb"),
    "list_fano": ("list_fano_bits", "list_fano_lcb"),
    "variational": ("variational_bits", "variational_lcb"),
}
#: The held-out means the bounds are computed from (top-1 error, top-k error, cross-entropy in
#: bits); each has an upper confidence column, see :func:`ucb_column`.
ESTIMATES = ("p_error", "p_error_k", "ce_bits")


def fraction_column(column: str) -> str:
    """The column of a bound over H(T): "fano_bits" -> "fano_frac", "fano_lcb" -> "fano_lcb_frac"."""
    return column.removesuffix("_bits") + "_frac"


def ucb_column(estimate: str) -> str:
    """The upper confidence column of an estimate: "p_error" -> "p_error_ucb"."""
    return f"{estimate}_ucb"


BOUND_COLUMNS = tuple(column for pair in BOUNDS.values() for column in pair)
FRACTION_COLUMNS = tuple(fraction_column(c) for c in BOUND_COLUMNS)
#: The bounds' lower confidence values: a layer whose every one is clamped at 0 says nothing.
LOWER_BOUND_COLUMNS = tuple(lcb for _, lcb in BOUNDS.values())
_FRACTION_OF = dict(zip(FRACTION_COLUMNS, BOUND_COLUMNS))


def bound_column(column: str) -> str:
    """The bound column a shown column derives from ("variational_lcb_frac" -> "variational_lcb");
    ``clamped`` names bound columns, so this says whether a shown value was clamped."""
    return _FRACTION_OF.get(column, column)


COLUMNS = [
    "model", "revision", "layer", "rel_depth", "pooling", "vocab", "M", "n_train", "n_test", "n_skipped",
    "H_T", "p_error", "p_error_ucb", "k", "p_error_k", "p_error_k_ucb", "ce_bits", "ce_bits_ucb", "bag_recall",
    "fano_bits", "fano_lcb", "list_fano_bits", "list_fano_lcb", "variational_bits", "variational_lcb",
    "fano_frac", "fano_lcb_frac", "list_fano_frac", "list_fano_lcb_frac", "variational_frac",
    "variational_lcb_frac", "level", "clamped",
    "probe_seeds", "fano_seed_sd", "list_fano_seed_sd", "variational_seed_sd",
]  # fmt: skip
#: With ``probe_seeds`` > 1 (only then): per bound, the standard deviation over the seeds of each seed's
#: point value; the point and lcb columns are then those of the seed-averaged probe (docs/theory.md §5).
SEED_COLUMNS = tuple(f"{bound}_seed_sd" for bound in BOUNDS)
#: What :meth:`RecoverabilityResult.format_table` shows by default: fits a terminal, says the most.
TERMINAL_COLUMNS = [
    "model", "layer", "rel_depth", "H_T", "p_error", "p_error_k", "ce_bits", "bag_recall",
    "fano_lcb", "list_fano_lcb", "variational_lcb", "variational_lcb_frac", "data_limited", "converged",
]  # fmt: skip
#: The columns of a sample-size curve point (:mod:`fastmi.probe.curves`), besides model, layer,
#: fraction and n_train.
CURVE_COLUMNS = (
    "H_T", "ce_bits", "ce_bits_ucb", "fano_bits", "fano_lcb", "list_fano_bits", "list_fano_lcb",
    "variational_bits", "variational_lcb", "variational_frac", "variational_lcb_frac",
)  # fmt: skip

STR_COLUMNS = ("model", "revision", "pooling", "vocab", "clamped", "probe", "train_softmax")
BOOL_COLUMNS = ("data_limited", "converged")
INT_COLUMNS = ("layer", "M", "n_train", "n_test", "n_skipped", "k", "probe_seeds")
