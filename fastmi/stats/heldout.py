"""Per-sentence held-out scores of each probed layer, kept in a result so differences can be resampled.

A bound is a function of three held-out means (top-1 error, top-k error, cross-entropy).  A paired
comparison of two layers or two models (:mod:`fastmi.stats.comparison`) resamples the held-out sentences
they share, so it needs each sentence's value, not only the means.  They are stored per model as
the held-out corpus row ids and, per layer, three float32 vectors, each written to JSON as base64
of its little-endian bytes: 2,000 sentences x 31 layers x 3 statistics come to about 1 MB.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

from fastmi.stats.heldout_entropy import Frequencies

__all__ = ["HeldOut", "STATISTICS"]

#: The per-sentence statistics a bound needs (see :func:`fastmi.stats.bounds.layer_bounds`).
STATISTICS = ("errors", "errors_k", "ce_bits")


def _encode(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def _decode(text: str, dtype: str, size: int, what: str) -> np.ndarray:
    values = np.frombuffer(base64.b64decode(text.encode()), dtype=np.dtype(dtype).newbyteorder("<"))
    if values.size != size:
        raise ValueError(f"held-out {what} has {values.size} values, expected {size}")
    return values.astype(np.float64 if dtype == "f4" else np.int64)


@dataclass
class HeldOut:
    """One model's held-out sentences (corpus row ids) and each layer's per-sentence statistics."""

    rows: np.ndarray  # int64 [n], corpus row of each held-out sentence, ascending
    layers: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # layer -> statistic -> [n]
    # With probe_seeds > 1 (``layers`` then holds the means over the seeds' probes): layer -> [N, 3, n],
    # each seed's own per-sentence STATISTICS, for the seed terms of an interval (docs/theory.md §5).
    seeds: dict[int, np.ndarray] = field(default_factory=dict)
    # The held-out bags over the alphabet, so that comparisons resample H(f(T)) with the error terms
    # (None in results made before they were kept: H_T is then taken as known).
    frequencies: Frequencies | None = None

    def num_seeds(self, layer: int) -> int:
        return int(self.seeds[layer].shape[0]) if layer in self.seeds else 1

    def seed_means(self, layer: int) -> np.ndarray | None:
        """[N, 3]: each seed's held-out means, or None with one probe."""
        return self.seeds[layer].mean(axis=2) if layer in self.seeds else None

    def add(self, layer: int, **statistics: np.ndarray) -> None:
        missing = set(STATISTICS) - set(statistics)
        if missing:
            raise ValueError(f"layer {layer}: held-out statistics {sorted(missing)} are missing")
        arrays = {name: np.asarray(statistics[name], dtype=np.float64).ravel() for name in STATISTICS}
        for name, values in arrays.items():
            if values.size != self.rows.size:
                raise ValueError(f"layer {layer}: {name} has {values.size} values for {self.rows.size} held-out rows")
        self.layers[int(layer)] = arrays

    def on_rows(self, layer: int, rows: np.ndarray, seed: int | None = None) -> dict[str, np.ndarray]:
        """``layer``'s statistics on the corpus rows ``rows`` (all of which must be held out here);
        ``seed``: those of the probe of that seed index (modulo their number) instead of their mean."""
        if layer not in self.layers:
            raise KeyError(f"no held-out scores for layer {layer}; this result has layers {sorted(self.layers)}")
        position = np.searchsorted(self.rows, rows)
        if np.any(position >= self.rows.size) or np.any(self.rows[np.minimum(position, self.rows.size - 1)] != rows):
            raise ValueError("some requested rows are not held-out rows of this model")
        if seed is not None and layer in self.seeds:
            values = self.seeds[layer][seed % self.num_seeds(layer)]
            return {name: values[j][position] for j, name in enumerate(STATISTICS)}
        return {name: values[position] for name, values in self.layers[layer].items()}

    def to_dict(self) -> dict:
        out = {
            "encoding": "base64 little-endian; rows int32, statistics float32",
            "num_rows": int(self.rows.size),
            "rows": _encode(self.rows, "i4"),
            "layers": {
                str(layer): {name: _encode(v, "f4") for name, v in stats.items()}
                for layer, stats in sorted(self.layers.items())
            },
        }
        if self.frequencies is not None:
            out["frequencies"] = self.frequencies.to_dict()
        if self.seeds:
            out["seeds"] = {
                str(layer): {"num_seeds": int(v.shape[0]), "values": _encode(v.ravel(), "f4")}
                for layer, v in sorted(self.seeds.items())
            }
        return out

    @classmethod
    def from_dict(cls, data: dict) -> HeldOut:
        size = int(data["num_rows"])
        held = cls(rows=_decode(data["rows"], "i4", size, "rows"))
        for layer, stats in data.get("layers", {}).items():
            held.add(int(layer), **{name: _decode(stats[name], "f4", size, name) for name in STATISTICS})
        if data.get("frequencies"):
            held.frequencies = Frequencies.from_dict(data["frequencies"])
        for layer, stored in (data.get("seeds") or {}).items():
            count = int(stored["num_seeds"])
            values = _decode(stored["values"], "f4", count * len(STATISTICS) * size, "per-seed statistics")
            held.seeds[int(layer)] = values.reshape(count, len(STATISTICS), size)
        return held
