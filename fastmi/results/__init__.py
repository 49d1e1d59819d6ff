"""The result table (its column names in :mod:`fastmi.results.columns`), its plots and the advice printed with it."""
