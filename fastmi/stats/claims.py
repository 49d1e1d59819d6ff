"""The paper's two claims as tested statements, from one sweep, each with differences, intervals
and a verdict.

1. "Encoder-only models keep more than decoder-only ones at matched depth": encoder minus decoder
   at each matched relative depth (:func:`fastmi.stats.comparison.matched_layers`), and the mean of those
   differences over depths.  The per-depth statements form one family of m tests: their intervals
   are Bonferroni-adjusted (each at 1 - alpha/m), so all m hold together with probability at least
   1 - alpha.  Bonferroni rather than Holm because it comes with intervals that match its verdicts
   (Holm rejects at least as often but gives no simultaneous intervals).  The mean over depths is a
   single statement at the stated level.
2. "Decoder-only models gain, then forget": peak minus first layer > 0 and peak minus last layer
   > 0.  The claim is the conjunction, an intersection-union test (Berger 1982): it holds at level
   alpha when each part holds at level alpha, so neither part needs a correction.  The peak is the
   interior layer of lowest validation cross-entropy: it is chosen on the validation rows, so the
   held-out rows the differences are computed on played no part in choosing it.

Verdicts: "holds" when the interval lies above 0, "contradicted" when it lies below 0, "not
resolved at this level" otherwise.  Models with different tokenizers are compared on recoverable
fractions (bound / H(T)).  The two claims are separate statements, each at the stated level; there
is no correction across them.  As in :mod:`fastmi.stats.comparison`, a difference of lower bounds says what a
linear probe recovers, not how the mutual informations themselves compare.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastmi.runtime.files import atomic_write_text
from fastmi.stats.bootstrap import paired_counts
from fastmi.stats.comparison import (
    LayerRef,
    _shared_rows,
    layer_statistic,
    matched_layers,
    peak_layer,
    same_tokenizer,
)
from fastmi.stats.paired import paired_interval

__all__ = ["Statement", "Claim", "evaluate_claims", "verdict", "format_claims", "HOLDS", "CONTRADICTED", "UNRESOLVED"]

HOLDS, CONTRADICTED, UNRESOLVED = "holds", "contradicted", "not resolved at this level"


def verdict(lower: float, upper: float) -> str:
    """holds (interval above 0), contradicted (below 0), or not resolved at this level."""
    return HOLDS if lower > 0 else CONTRADICTED if upper < 0 else UNRESOLVED


def _conjunction(verdicts: list[str]) -> str:
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return CONTRADICTED if CONTRADICTED in verdicts else UNRESOLVED


@dataclass
class Statement:
    """One tested difference: ``difference`` with its interval at ``level``, and the verdict."""

    label: str
    difference: float
    lower: float
    upper: float
    level: float
    verdict: str


@dataclass
class Claim:
    name: str
    statement: str
    verdict: str
    tests: list[Statement]
    notes: list[str] = field(default_factory=list)


def _kind(result: Any, model: str) -> str | None:
    config = result.model_config(model)
    return (config.get("source") or {}).get("kind") or config.get("kind")


def _difference(result, refs_a, refs_b, rows, counts, bound, fraction, level, n_bootstrap, seed) -> tuple:
    """Mean over pairs of (A_i - B_i) with its paired interval; one pair gives a plain difference."""
    refs = [ref for pair in zip(refs_a, refs_b) for ref in pair]
    functions = [layer_statistic(result, ref, bound, fraction) for ref in refs]
    weights = [(1.0 if i % 2 == 0 else -1.0) / len(refs_a) for i in range(len(refs))]
    return paired_interval(result, refs, functions, weights, rows, level, n_bootstrap, seed, counts)


def _encoder_keeps_more(result, encoder, decoder, level, n_bootstrap, seed, bound) -> list[Claim]:
    fraction = not same_tokenizer(result, encoder, decoder)
    pairs = matched_layers(result, encoder, decoder)
    depth = {r["layer"]: r["rel_depth"] for r in result.table if r["model"] == encoder}
    rows = _shared_rows(result, [encoder, decoder])
    counts = paired_counts(rows.size, n_bootstrap, seed)
    adjusted = 1 - (1 - level) / len(pairs)
    tests = []
    for le, ld in pairs:
        point, lower, upper = _difference(
            result,
            [LayerRef(encoder, le)],
            [LayerRef(decoder, ld)],
            rows,
            counts,
            bound,
            fraction,
            adjusted,
            n_bootstrap,
            seed,
        )
        tests.append(
            Statement(
                f"depth {depth[le]:.3f}: {encoder}:{le} - {decoder}:{ld}",
                point,
                lower,
                upper,
                adjusted,
                verdict(lower, upper),
            )
        )
    point, lower, upper = _difference(
        result,
        [LayerRef(encoder, le) for le, _ in pairs],
        [LayerRef(decoder, ld) for _, ld in pairs],
        rows,
        counts,
        bound,
        fraction,
        level,
        n_bootstrap,
        seed,
    )
    mean = Statement(f"mean over {len(pairs)} depths", point, lower, upper, level, verdict(lower, upper))
    unit = "recoverable fraction (bound / own H(T)): the tokenizers differ" if fraction else "bits"
    shared = [
        f"{bound} bound, {unit}; {rows.size} shared held-out sentences",
        f"{len(pairs)} matched depths, layers paired by nearest relative depth",
    ]
    return [
        Claim(
            f"encoder keeps more than decoder at each matched depth ({encoder} vs {decoder})",
            f"{encoder} - {decoder} > 0 at every matched depth",
            _conjunction([t.verdict for t in tests]),
            tests,
            shared
            + [
                f"Bonferroni over the {len(pairs)} depths: each interval at {adjusted:.2%}, simultaneous "
                f"{level:.0%}; holds only if every depth holds, contradicted if any depth is"
            ],
        ),
        Claim(
            f"encoder keeps more than decoder, mean over depths ({encoder} vs {decoder})",
            f"mean over matched depths of ({encoder} - {decoder}) > 0",
            mean.verdict,
            [mean],
            shared + [f"one statement at {level:.0%}"],
        ),
    ]


def _gains_then_forgets(result, decoder, level, n_bootstrap, seed, bound) -> Claim:
    layers = sorted(r["layer"] for r in result.table if r["model"] == decoder)
    peak = peak_layer(result, decoder)
    rows = _shared_rows(result, [decoder])
    counts = paired_counts(rows.size, n_bootstrap, seed)
    tests = []
    for other, name in ((layers[0], "first"), (layers[-1], "last")):
        point, lower, upper = _difference(
            result,
            [LayerRef(decoder, peak)],
            [LayerRef(decoder, other)],
            rows,
            counts,
            bound,
            False,
            level,
            n_bootstrap,
            seed,
        )
        tests.append(
            Statement(
                f"peak {decoder}:{peak} - {name} {decoder}:{other}", point, lower, upper, level, verdict(lower, upper)
            )
        )
    return Claim(
        f"decoder gains, then forgets ({decoder})",
        f"peak - first > 0 and peak - last > 0 ({decoder})",
        _conjunction([t.verdict for t in tests]),
        tests,
        [
            f"{bound} bound, bits; {rows.size} held-out sentences",
            f"peak = layer {peak}, the interior layer of lowest validation cross-entropy (chosen on validation rows, "
            "not on the held-out rows tested here)",
            f"intersection-union test: the claim holds if both parts hold, each at {level:.0%}; no correction needed",
        ],
    )


def evaluate_claims(
    result: Any, level: float = 0.95, n_bootstrap: int = 2000, seed: int = 0, bound: str = "variational"
) -> list[Claim]:
    """Both claims for every encoder/decoder in ``result`` (kinds read from each model's cache metadata)."""
    kinds = {m: _kind(result, m) for m in result.models}
    encoders = [m for m, k in kinds.items() if k == "encoder"]
    decoders = [m for m, k in kinds.items() if k == "decoder"]
    if not decoders:
        raise ValueError(f"the claims need a decoder-only model in the result; kinds found: {kinds}")
    claims: list[Claim] = []
    for encoder in encoders:
        for decoder in decoders:
            claims += _encoder_keeps_more(result, encoder, decoder, level, n_bootstrap, seed, bound)
    for decoder in decoders:
        claims.append(_gains_then_forgets(result, decoder, level, n_bootstrap, seed, bound))
    return claims


def format_claims(claims: list[Claim], digits: int = 3) -> str:
    lines = []
    for claim in claims:
        lines.append(f"{claim.name}: {claim.verdict.upper()}")
        lines.append(f"  statement: {claim.statement}")
        lines += [f"  note: {note}" for note in claim.notes]
        width = max(len(t.label) for t in claim.tests)
        for t in claim.tests:
            lines.append(
                f"    {t.label.ljust(width)}  {t.difference:+.{digits}f}  [{t.lower:+.{digits}f}, "
                f"{t.upper:+.{digits}f}] at {t.level:.2%}  {t.verdict}"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def claims_to_json(claims: list[Claim], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps([asdict(c) for c in claims], indent=2) + "\n")
    return path
