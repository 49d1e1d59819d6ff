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
from typing import Any

import numpy as np

from fastmi.stats import bounds
from fastmi.stats.heldout import STATISTICS

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
    from pathlib import Path

    path = Path(given).expanduser()
    return path.exists() and source == str(path.resolve())


def _same_spec(given: str, model: str, source: str) -> bool:
    return source == given


def _same_short_name(given: str, model: str, source: str) -> bool:
    from fastmi.models.loading import short_model_name

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


def resample_counts(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """[B, n] how often each of n sentences is drawn in each of B resamples (seeded)."""
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 shared held-out sentences, got {n}")
    if int(n_bootstrap) < 100:
        raise ValueError(f"n_bootstrap must be at least 100, got {n_bootstrap}")
    rng = np.random.default_rng([seed, 0x70616972])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_bootstrap)).astype(np.float32)


def paired_bootstrap(
    values: np.ndarray,
    statistic,
    level: float = 0.95,
    n_bootstrap: int = 2000,
    seed: int = 0,
    counts: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Point value and two-sided percentile interval at ``level`` of ``statistic(means)``.

    ``values`` [n, s]: one row per sentence (the pairing), one column per per-sentence quantity;
    ``statistic`` maps column means [..., s] to a value [...]: it sees the observed means once and
    the means of every resample of rows.
    """
    if not 0.5 <= level < 1:
        raise ValueError(f"level must be in [0.5, 1), got {level}")
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    counts = resample_counts(n, n_bootstrap, seed) if counts is None else counts
    means = (counts.astype(np.float64) @ values) / n  # [B, s]
    point = float(statistic(values.mean(axis=0)))
    draws = np.asarray(statistic(means), dtype=np.float64)
    alpha = 1 - level
    lower, upper = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return point, float(lower), float(upper)


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

    def to_json(self, path) -> Any:
        from pathlib import Path

        from fastmi.results.result import _atomic_write

        path = Path(path)
        with _atomic_write(path) as f:
            f.write(
                json.dumps({"level": self.level, "unit": self.unit, "notes": self.notes, "rows": self.rows}, indent=2)
                + "\n"
            )
        return path


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
    """(columns [n, 3] on the given rows -> bound function of means) for one (model, layer)."""
    row = next(r for r in _layers_of(result, ref.model) if r["layer"] == ref.layer)
    entropy, size, k = float(row["H_T"]), int(row["M"]), int(row["k"])
    scale = 1.0 / entropy if fraction and entropy > 0 else 1.0

    def value(means: np.ndarray) -> np.ndarray:
        named = {name: means[..., j] for j, name in enumerate(STATISTICS)}
        return bound_from_means(bound, named, entropy, size, k) * scale

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
        "intervals are per row (not simultaneous), cover the held-out sampling only (probe and H(T) fixed), "
        "and compare bounds (unclamped), not the mutual informations themselves"
    )
    rows_shared = _shared_rows(result, [model_a, model_b])
    counts = resample_counts(rows_shared.size, n_bootstrap, seed)
    out = []
    for ref_a, ref_b in pairs:
        stats_a = result.held_out[ref_a.model].on_rows(ref_a.layer, rows_shared)
        stats_b = result.held_out[ref_b.model].on_rows(ref_b.layer, rows_shared)
        values = np.column_stack([stats_a[s] for s in STATISTICS] + [stats_b[s] for s in STATISTICS])
        depth = next(r["rel_depth"] for r in _layers_of(result, ref_a.model) if r["layer"] == ref_a.layer)
        for bound in bounds_to_compare:
            fa, fb = (layer_statistic(result, ref, bound, fraction) for ref in (ref_a, ref_b))
            n_stats = len(STATISTICS)
            point, lower, upper = paired_bootstrap(
                values,
                lambda m: fa(m[..., :n_stats]) - fb(m[..., n_stats:]),  # noqa: B023 (called right here)
                level,
                n_bootstrap,
                seed,
                counts,  # noqa: B023
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
