"""Paired comparisons: the difference of a bound between two layers, or two models, with an interval.

Every model of a sweep is scored on the same held-out sentences, so the difference of a bound
between two (model, layer) pairs can be resampled sentence by sentence: each bootstrap resample
draws held-out sentences with replacement, recomputes both bounds from the same drawn sentences
and takes their difference.  What the two share (the sentence's difficulty) cancels, so the
interval is much narrower than the two bounds' own bands would suggest.

What is compared is the bound, i.e. what a linear probe recovers, not I(T; z) itself: a difference
of lower bounds is not a bound on the difference of the informations (docs/theory.md §7).  The probe
and H(T) are held fixed; the interval covers the sampling of held-out sentences only.  Models with
different tokenizers have different T, so they are compared on recoverable fractions (bound / H(T),
each model's own H(T)), and the output says so.  Bounds are compared unclamped (a vacuous bound is
negative here, not 0), so a difference is never an artefact of clamping.

A model is named as in the table or as it was passed to ``--model`` (:func:`match_model`).
Layers are named ``"model"`` (every depth, matched to the other model's nearest relative depth),
``"model:LAYER"`` with LAYER an integer, ``first``, ``last`` or ``peak``; the peak is the interior
layer with the lowest *validation* cross-entropy, so choosing it does not touch the held-out rows
the difference is computed on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastmi.runtime.files import atomic_write_text
from fastmi.stats import bounds
from fastmi.stats.bootstrap import paired_bootstrap, paired_counts
from fastmi.stats.heldout import STATISTICS
from fastmi.stats.paired import _columns, paired_interval

__all__ = [
    "compare",
    "Comparison",
    "LayerRef",
    "paired_bootstrap",
    "bound_from_means",
    "resolve_layer",
    "match_model",
    "matched_layers",
    "same_tokenizer",
    "COMPARED_BOUNDS",
]

COMPARED_BOUNDS = ("variational", "list_fano", "fano")


@dataclass(frozen=True)
class LayerRef:
    """One (model, layer) of a result; ``how`` says how the layer was chosen (e.g. "peak")."""

    model: str
    layer: int
    how: str = ""

    def __str__(self) -> str:
        return f"{self.model}:{self.layer}" + (f" ({self.how})" if self.how and self.how != str(self.layer) else "")


def _layers_of(result: Any, model: str) -> list[dict]:
    rows = sorted((r for r in result.table if r["model"] == model), key=lambda r: r["layer"])
    if not rows:
        raise ValueError(f"no model {model!r} in this result; it has {result.models}")
    return rows


def peak_layer(result: Any, model: str) -> int:
    """The interior layer with the lowest validation cross-entropy (the held-out rows are not used)."""
    layers = [r["layer"] for r in _layers_of(result, model)]
    if len(layers) < 3:
        raise ValueError(f"{model} has {len(layers)} layers; a peak between the first and last needs 3 or more")
    training = result.model_config(model).get("training") or {}
    missing = [layer for layer in layers[1:-1] if str(layer) not in training]
    if missing:
        raise ValueError(f"{model}: no validation cross-entropy for layers {missing}, so no peak can be chosen")
    return min(layers[1:-1], key=lambda layer: training[str(layer)]["validation_ce_bits"])


def resolve_layer(result: Any, spec: str | tuple) -> tuple[str, int | None, str]:
    """``"model"`` -> (model, None, ""); ``"model:peak"`` or ("model", 3) -> (model, layer, how)."""
    if isinstance(spec, tuple):
        model, which = spec
    elif ":" in str(spec) and str(spec) not in result.models:
        model, which = str(spec).rsplit(":", 1)
    else:
        model, which = str(spec), None
    model = match_model(result, model)
    if which is None:
        return model, None, ""
    layers = [r["layer"] for r in _layers_of(result, model)]
    which = str(which)
    if which == "first":
        return model, layers[0], "first"
    if which == "last":
        return model, layers[-1], "last"
    if which == "peak":
        return model, peak_layer(result, model), "peak"
    try:
        layer = int(which)
    except ValueError:
        raise ValueError(f"layer {which!r} of {model}: use an integer, 'first', 'last' or 'peak'") from None
    if layer not in layers:
        raise ValueError(f"{model} has no layer {layer}; it has {layers}")
    return model, layer, which


def match_model(result: Any, given: str) -> str:
    """The model of ``result`` that ``given`` names: its name in the table, or what was passed to
    ``--model`` (demo alias, hub id, relative or absolute path, or the short name of that path).

    A path names the model whose cache was built from the same file or folder; only when no path
    or spec matches is the short name compared, so "a/model" and "b/model" stay apart.
    """
    if given in result.models:
        return given
    sources = {model: _source_of(result, model) for model in result.models}
    for same in (_same_path, _same_spec, _same_short_name):
        found = [model for model, source in sources.items() if same(given, model, source)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"{given!r} could be any of the models {found}; name one as it is written there")
    raise ValueError(f"no model {given!r} in this result; it has {result.models}")


def _source_of(result: Any, model: str) -> str:
    """What the model's cache was built from: alias, hub id or absolute path (its name if unknown)."""
    return str((result.model_config(model).get("source") or {}).get("model") or model)


def _same_path(given: str, model: str, source: str) -> bool:
    path = Path(given).expanduser()
    return path.exists() and source == str(path.resolve())


def _same_spec(given: str, model: str, source: str) -> bool:
    return source == given


def _same_short_name(given: str, model: str, source: str) -> bool:
    from fastmi.models.specs import short_model_name

    short = short_model_name(given)
    return short in (model, short_model_name(source))


def matched_layers(result: Any, a: str, b: str) -> list[tuple[int, int]]:
    """For each layer of the model with fewer layers, the other's layer at the nearest relative depth."""
    rows_a, rows_b = _layers_of(result, a), _layers_of(result, b)
    swap = len(rows_b) < len(rows_a)
    few, many = (rows_b, rows_a) if swap else (rows_a, rows_b)
    pairs = []
    for row in few:
        match = min(many, key=lambda r: (abs(r["rel_depth"] - row["rel_depth"]), r["layer"]))
        pairs.append((match["layer"], row["layer"]) if swap else (row["layer"], match["layer"]))
    return pairs


def same_tokenizer(result: Any, a: str, b: str) -> bool:
    """One model, or two whose T has the same alphabet and the same H(T) on this corpus (same
    vocabulary size, M and entropy: in practice the same tokenizer)."""
    if a == b:
        return True
    first_a, first_b = _layers_of(result, a)[0], _layers_of(result, b)[0]
    vocab = [result.model_config(m).get("vocab_size") for m in (a, b)]
    return vocab[0] == vocab[1] and first_a["M"] == first_b["M"] and abs(first_a["H_T"] - first_b["H_T"]) < 1e-9


def bound_from_means(
    bound: str, means: dict[str, np.ndarray], entropy: float, alphabet_size: int, k: int
) -> np.ndarray:
    """The unclamped bound (bits) from mean per-sentence statistics (arrays of resampled means)."""
    if bound == "variational":
        return entropy - means["ce_bits"]
    if bound == "fano":
        return np.asarray(bounds.fano_lower_bound(np.clip(means["errors"], 0, 1), entropy, alphabet_size))
    if bound == "list_fano":
        return np.asarray(bounds.list_fano_lower_bound(np.clip(means["errors_k"], 0, 1), k, entropy, alphabet_size))
    raise ValueError(f"bound must be one of {COMPARED_BOUNDS}, got {bound!r}")


@dataclass
class Comparison:
    """Rows of differences (A minus B) with their paired intervals; ``notes`` say how to read them."""

    rows: list[dict]
    level: float
    unit: str
    notes: list[str] = field(default_factory=list)

    def format(self, digits: int = 3) -> str:
        head = (
            f"difference A - B, {self.unit}, paired bootstrap {self.level:.0%} interval over shared held-out sentences"
        )
        lines = [head, *(f"note: {n}" for n in self.notes)]
        header = ("A", "B", "bound", "A value", "B value", "A - B", "interval", "n")
        cells = [
            (
                r["a"],
                r["b"],
                r["bound"],
                f"{r['a_value']:.{digits}f}",
                f"{r['b_value']:.{digits}f}",
                f"{r['difference']:+.{digits}f}",
                f"[{r['lower']:+.{digits}f}, {r['upper']:+.{digits}f}]",
                str(r["n_sentences"]),
            )
            for r in self.rows
        ]
        widths = [max(len(h), *(len(c[j]) for c in cells)) if cells else len(h) for j, h in enumerate(header)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
        return "\n".join(lines)

    def to_json(self, path) -> Path:
        document = {"level": self.level, "unit": self.unit, "notes": self.notes, "rows": self.rows}
        atomic_write_text(Path(path), json.dumps(document, indent=2) + "\n")
        return Path(path)


def _shared_rows(result: Any, models: Sequence[str]) -> np.ndarray:
    missing = [m for m in models if m not in result.held_out]
    if missing:
        raise ValueError(
            f"no per-sentence held-out scores for {missing} in this result (made before they were "
            "kept); probe again to compare"
        )
    rows = result.held_out[models[0]].rows
    for model in models[1:]:
        rows = np.intersect1d(rows, result.held_out[model].rows)
    if rows.size < 2:
        raise ValueError(f"models {list(models)} share {rows.size} held-out sentences: were they probed on one split?")
    return rows


def layer_statistic(result: Any, ref: LayerRef, bound: str, fraction: bool):
    """The bound of one (model, layer) as a function ``value(means [..., 3], h=None)`` of the means of
    its per-sentence statistics and H(f(T)) (default: the table's H_T; resampled H values give the
    bound in each resample, :mod:`fastmi.stats.paired`)."""
    row = next(r for r in _layers_of(result, ref.model) if r["layer"] == ref.layer)
    table_entropy, size, k = float(row["H_T"]), int(row["M"]), int(row["k"])

    def value(means: np.ndarray, h=None) -> np.ndarray:
        entropy = table_entropy if h is None else np.asarray(h, dtype=np.float64)
        named = {name: means[..., j] for j, name in enumerate(STATISTICS)}
        bound_bits = bound_from_means(bound, named, entropy, size, k)
        if not fraction:
            return bound_bits
        return np.where(entropy > 0, bound_bits / np.where(entropy > 0, entropy, 1.0), 0.0)

    return value


def compare(
    result: Any,
    a: str | tuple,
    b: str | tuple,
    level: float = 0.95,
    n_bootstrap: int = 2000,
    seed: int = 0,
    bounds_to_compare: Sequence[str] = COMPARED_BOUNDS,
    fraction: bool | None = None,
) -> Comparison:
    """Differences A - B of each bound with paired bootstrap intervals at ``level`` (two-sided).

    ``a``, ``b``: ``"model"`` (all depths, matched by relative depth to the other model), or
    ``"model:LAYER"`` / ``("model", LAYER)``, LAYER an int or ``first``/``last``/``peak``.
    ``fraction``: compare bound / H(T) (default: when the two models' tokenizers differ).
    """
    model_a, layer_a, how_a = resolve_layer(result, a)
    model_b, layer_b, how_b = resolve_layer(result, b)
    if (layer_a is None) != (layer_b is None):
        raise ValueError("name a layer for both A and B ('model:LAYER'), or for neither (matched depths)")
    if layer_a is None:
        if model_a == model_b:
            raise ValueError(f"A and B are both all of {model_a}: name layers, e.g. {model_a}:peak {model_a}:last")
        pairs = [(LayerRef(model_a, la), LayerRef(model_b, lb)) for la, lb in matched_layers(result, model_a, model_b)]
    else:
        pairs = [(LayerRef(model_a, layer_a, how_a), LayerRef(model_b, layer_b, how_b))]
    notes = []
    different = not same_tokenizer(result, model_a, model_b)
    fraction = different if fraction is None else fraction
    if different:
        notes.append(
            f"{model_a} and {model_b} have different tokenizers (different T): compared as recoverable "
            "fractions, each bound over its own model's H(T)"
        )
    if "peak" in (how_a, how_b):
        notes.append(
            "the peak layer is the interior layer of lowest validation cross-entropy: chosen without the "
            "held-out sentences"
        )
    if layer_a is None:
        notes.append("layers matched by nearest relative depth (layer / number of layers)")
    notes.append(
        "intervals are per row (not simultaneous), cover the held-out sampling of the error terms and of "
        "H(T) (and, with probe_seeds > 1, the probes' seeds), and compare bounds (unclamped), not the mutual "
        "informations themselves"
    )
    rows_shared = _shared_rows(result, [model_a, model_b])
    counts = paired_counts(rows_shared.size, n_bootstrap, seed)
    out = []
    for ref_a, ref_b in pairs:
        depth = next(r["rel_depth"] for r in _layers_of(result, ref_a.model) if r["layer"] == ref_a.layer)
        values = _columns(result, (ref_a, ref_b), rows_shared)
        n_stats = len(STATISTICS)
        for bound in bounds_to_compare:
            fa, fb = (layer_statistic(result, ref, bound, fraction) for ref in (ref_a, ref_b))
            point, lower, upper = paired_interval(
                result, (ref_a, ref_b), (fa, fb), (1.0, -1.0), rows_shared, level, n_bootstrap, seed, counts
            )
            out.append(
                {
                    "a": str(ref_a),
                    "b": str(ref_b),
                    "a_model": ref_a.model,
                    "a_layer": ref_a.layer,
                    "b_model": ref_b.model,
                    "b_layer": ref_b.layer,
                    "rel_depth": depth,
                    "bound": bound,
                    "a_value": float(fa(values[:, :n_stats].mean(0))),
                    "b_value": float(fb(values[:, n_stats:].mean(0))),
                    "difference": point,
                    "lower": lower,
                    "upper": upper,
                    "level": level,
                    "n_sentences": int(rows_shared.size),
                }
            )
    return Comparison(out, level, "fraction of H(T)" if fraction else "bits", notes)
