"""RecoverabilityResult: the per-(model, layer) table of bounds, saved as CSV and JSON, plotted.

One row per (model, layer), columns in :data:`~fastmi.results.columns.COLUMNS` order (rows may
carry extra columns; they follow).  ``config`` is the resolved configuration of the run (seed,
split, probe settings).  A result of several models keeps the settings they share at the top of
``config`` and the rest under ``config["per_model"][model]``, so
:meth:`RecoverabilityResult.for_model` gives each model's own configuration back.  ``held_out``
(per model, the per-sentence held-out scores behind the bounds: :mod:`fastmi.stats.heldout`) and
``curves`` (bounds against n_train: :mod:`fastmi.probe.curves`) are kept when present, and travel
through JSON, :meth:`~RecoverabilityResult.for_model` and ``concat``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastmi.results.columns import BOOL_COLUMNS, COLUMNS, INT_COLUMNS, STR_COLUMNS, TERMINAL_COLUMNS, bound_column
from fastmi.runtime.files import atomic_write_text

__all__ = ["RecoverabilityResult", "COLUMNS", "TERMINAL_COLUMNS"]


def _clean(name: str, value: Any) -> Any:
    """Plain Python values (no numpy/torch scalars), typed by column; NaN becomes None."""
    if hasattr(value, "item"):
        value = value.item()
    if name in STR_COLUMNS:
        return "" if value is None else str(value)
    if value is None or isinstance(value, (str, bool)):
        return value
    if name in INT_COLUMNS:
        if float(value) != int(value):
            raise ValueError(f"column {name!r} must hold integers, got {value!r}")
        return int(value)
    if isinstance(value, (int, float)):
        value = float(value)
        return None if math.isnan(value) else value
    return value


class RecoverabilityResult:
    """Bounds on I(T; z) per (model, layer); see docs/theory.md for what each column means."""

    def __init__(
        self,
        rows: Sequence[dict],
        config: dict | None = None,
        held_out: dict | None = None,
        curves: Sequence[dict] | None = None,
    ):
        cleaned = [{name: _clean(name, value) for name, value in row.items()} for row in rows]
        for i, row in enumerate(cleaned):
            missing = [c for c in ("model", "layer") if row.get(c) is None]
            if missing:
                raise ValueError(f"row {i} has no {' or '.join(missing)}")
        seen: set[tuple[str, int]] = set()
        for row in cleaned:
            key = (row["model"], row["layer"])
            if key in seen:
                raise ValueError(f"duplicate row for model {key[0]!r}, layer {key[1]}")
            seen.add(key)
        order = {m: i for i, m in reversed(list(enumerate(r["model"] for r in cleaned)))}
        self._rows = sorted(cleaned, key=lambda r: (order[r["model"]], r["layer"]))
        self.config = dict(config or {})
        self.held_out: dict = dict(held_out or {})  # model -> fastmi.stats.heldout.HeldOut
        self.curves: list[dict] = [dict(c) for c in curves or ()]  # one row per (model, layer, n_train)

    # ---- the table ---------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        present = {name for row in self._rows for name in row}
        extras = list(dict.fromkeys(n for row in self._rows for n in row if n not in COLUMNS))
        return [c for c in COLUMNS if c in present] + extras

    @property
    def table(self) -> list[dict]:
        columns = self.columns
        return [{c: row.get(c) for c in columns} for row in self._rows]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(row["model"] for row in self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"RecoverabilityResult(models={self.models}, rows={len(self)})"

    def format_table(self, columns: Sequence[str] | None = None, digits: int = 3) -> str:
        """The table as aligned text: numbers right-aligned to ``digits`` decimals, '-' if absent,
        'vacuous' for a bound clamped at 0."""
        if columns is None:
            columns = [c for c in TERMINAL_COLUMNS if c in self.columns]
        unknown = [c for c in columns if c not in self.columns]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; this result has {self.columns}")

        def text(value: Any) -> str:
            if value is None:
                return "-"
            if isinstance(value, bool):
                return "yes" if value else "no"
            return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

        def cell(row: dict, column: str) -> str:
            # A bound clamped at 0 reads "vacuous", so 0.000 is never mistaken for a measured zero.
            if bound_column(column) in (row.get("clamped") or "").split(","):
                return "vacuous"
            return text(row.get(column))

        cells = [[cell(row, c) for c in columns] for row in self._rows]
        widths = [max([len(c)] + [len(r[j]) for r in cells]) for j, c in enumerate(columns)]
        left = [c in STR_COLUMNS for c in columns]

        def line(values: Iterable[str]) -> str:
            return "  ".join(v.ljust(w) if l else v.rjust(w) for v, w, l in zip(values, widths, left)).rstrip()

        return "\n".join([line(columns), line("-" * w for w in widths), *(line(r) for r in cells)])

    # ---- files -------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.table:
            writer.writerow({c: "" if v is None else (repr(v) if isinstance(v, float) else v) for c, v in row.items()})
        atomic_write_text(path, text.getvalue())
        return path

    @classmethod
    def from_csv(cls, path: str | os.PathLike, config: dict | None = None) -> RecoverabilityResult:
        """Rows from a CSV written by :meth:`to_csv` (a CSV holds no config: pass it, or use JSON)."""
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{name: _parse_csv_cell(name, cell) for name, cell in row.items()} for row in csv.DictReader(f)]
        return cls(rows, config)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Rows plus the resolved config, its seed and the fastmi version that made them."""
        from fastmi import __version__

        path = Path(path)
        document = {
            "fastmi_version": __version__,
            "seed": self.config.get("seed"),
            "config": self.config,
            "columns": self.columns,
            "rows": self.table,
        }
        if self.curves:
            document["curves"] = self.curves
        if self.held_out:
            document["held_out"] = {model: held.to_dict() for model, held in self.held_out.items()}
        atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False, default=_json_default) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> RecoverabilityResult:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
        if not isinstance(document, dict) or "rows" not in document:
            raise ValueError(f"{path} is not a fastmi result (no 'rows')")
        from fastmi.stats.heldout import HeldOut

        held_out = {model: HeldOut.from_dict(data) for model, data in (document.get("held_out") or {}).items()}
        return cls(document["rows"], document.get("config") or {}, held_out, document.get("curves"))

    def plot(self, path: str | os.PathLike, bound: str = "all", fraction: bool = False) -> Path:
        """PNG of the bounds against relative depth, one line per model; see :mod:`fastmi.results.plot`."""
        from fastmi.results.plot import plot_bounds

        return plot_bounds(self, path, bound=bound, fraction=fraction)

    # ---- several models ----------------------------------------------------------------------
    def model_config(self, name: str) -> dict:
        """The configuration ``name`` was run with (shared settings plus its own)."""
        if name not in self.models:
            raise KeyError(f"no model {name!r} in this result; it has {self.models}")
        config = {k: v for k, v in self.config.items() if k != "per_model"}
        config.update(self.config.get("per_model", {}).get(name, {}))
        return config

    def for_model(self, name: str) -> RecoverabilityResult:
        config = self.model_config(name)
        held_out = {name: self.held_out[name]} if name in self.held_out else None
        curves = [c for c in self.curves if c["model"] == name]
        return RecoverabilityResult([r for r in self._rows if r["model"] == name], config, held_out, curves)

    @classmethod
    def concat(cls, results: Sequence[RecoverabilityResult]) -> RecoverabilityResult:
        """One result holding the rows of all ``results`` (a model may appear in only one)."""
        results = list(results)
        if not results:
            raise ValueError("concat needs at least one result")
        configs: dict[str, dict] = {}
        for result in results:
            for name in result.models:
                if name in configs:
                    raise ValueError(f"model {name!r} appears in more than one result")
                configs[name] = result.model_config(name)
        rows = [row for result in results for row in result._rows]
        held_out = {name: held for result in results for name, held in result.held_out.items()}
        curves = [c for result in results for c in result.curves]
        if not configs:
            return cls(rows, results[0].config, held_out, curves)
        first = next(iter(configs.values()))
        shared = {k: v for k, v in first.items() if all(k in c and c[k] == v for c in configs.values())}
        own = {name: {k: v for k, v in c.items() if k not in shared} for name, c in configs.items()}
        config = dict(shared)
        if any(own.values()):
            config["per_model"] = own
        return cls(rows, config, held_out, curves)


def _parse_csv_cell(name: str, cell: str | None) -> Any:
    if name in STR_COLUMNS:
        return cell or ""
    if name in BOOL_COLUMNS and cell in ("True", "False"):
        return cell == "True"
    if cell is None or cell == "":
        return None
    if name in BOOL_COLUMNS:
        return cell == "True"
    if name in INT_COLUMNS:
        return int(cell)
    try:
        return float(cell)
    except ValueError:
        return cell  # an extra text column


def _json_default(value: Any) -> Any:
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "tolist"):  # numpy / torch arrays and scalars in a config
        return value.tolist()
    raise TypeError(f"config value {value!r} of type {type(value).__name__} cannot be written to JSON")
