"""The result table, its plots and the advice printed with it."""
