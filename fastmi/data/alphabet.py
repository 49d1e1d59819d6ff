"""The alphabet of T, the token drawn from a sentence, and the compaction of ids onto it.

Every setting is fixed before any held-out sentence is read: it is built from the training bags
(and, for ``"top:K"``, the validation bags), never from the held-out ones.

``"observed"``: the ids that occur in the training bags plus one "other" symbol standing for every
other id of the vocabulary (ids seen only in validation or held-out sentences, or never), M = their
count + 1.  The probe never trains on "other" (no training token is one), so its logit bias is then
calibrated on the validation sentences (:mod:`fastmi.probe.other_bias`).  ``"full"``: every id of
the tokenizer's vocabulary except the excluded special tokens.  ``"top:K"``: the K-1 ids most
frequent in the training and validation bags plus one "other" symbol standing for every other id
(M = K).  ``"min:C"``: the ids that occur at least C times in the training and validation bags plus
"other" for every rarer or unseen id.  ``"auto"`` is not built here: the run chooses one of
:data:`COARSENINGS` on the validation sentences first (:mod:`fastmi.probe.alphabet_choice`).  Every
setting trains the probe on compact ids 0..M-1, so its weight matrix has M rows, never more.

Why "top:K" and "min:C" are still bounds on the same quantity: it probes f(T), a function of T fixed before any
embedding is seen, and I(T; z) >= I(f(T); z) by data processing.  With a few hundred sentences the
rare ids cannot be learned nor their entropy estimated, so they only add noise to both sides of
H(T) - CE; merging them gives a smaller, honest bound that small corpora can actually show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastmi.data.bags import BagTargets

__all__ = ["Alphabet", "COARSENINGS", "VOCAB_SETTINGS", "alphabet_rule", "check_targets"]

VOCAB_SETTINGS = ("observed", "full", "top:K", "min:C", "auto")
# What vocab="auto" tries, finest first: it coarsens while the validation bound improves.
COARSENINGS = ("observed", "min:2", "min:4", "min:8", "min:16", "min:32")


def alphabet_rule(setting: str) -> dict[str, str | None]:
    """Which sentences fix the alphabet of ``setting`` and where "other" is calibrated: part of a
    result's identity (results and saved probe groups made under an older rule are not reused)."""
    kind, _ = parse_vocab(setting)
    if kind == "observed":
        return {"alphabet_from": "train", "other_calibrated_on": "validation"}
    if kind in ("top", "min"):
        return {"alphabet_from": "train+validation", "other_calibrated_on": None}
    if kind == "auto":
        return {"alphabet_from": "chosen on validation", "other_calibrated_on": "validation, if observed"}
    return {"alphabet_from": "vocabulary", "other_calibrated_on": None}


def check_targets(targets: BagTargets, vocab_size: int, excluded_ids: Sequence[int] = ()) -> None:
    """Every id of ``targets`` lies in the vocabulary and none is an excluded special token."""
    targets.check_vocab(vocab_size)
    excluded = _mask(vocab_size, excluded_ids)
    hit = excluded[targets.ids.cpu()]
    if bool(hit.any()):
        bad = int(targets.ids.cpu()[hit][0])
        raise ValueError(f"target id {bad} is an excluded special token; rebuild the bags without it")


def _mask(vocab_size: int, ids: Sequence[int]) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[torch.as_tensor([i for i in ids if 0 <= i < vocab_size], dtype=torch.long)] = True
    return mask


def parse_vocab(setting: str) -> tuple[str, int | None]:
    """("observed" | "full" | "auto", None), ("top", K) for "top:K" or ("min", C) for "min:C"; a clear
    error otherwise."""
    if setting in ("observed", "full", "auto"):
        return setting, None
    if isinstance(setting, str) and setting[:4] in ("top:", "min:"):
        try:
            number = int(setting[4:])
        except ValueError:
            number = 0
        if number >= 2:
            return setting[:3], number
    raise ValueError(
        f"vocab must be 'observed', 'full', 'auto', 'top:K' or 'min:C' with an integer K or C >= 2, got {setting!r}"
    )


@dataclass(frozen=True)
class Alphabet:
    """Compact id i stands for vocabulary id ``vocab_ids[i]`` (sorted ascending); with ``other``,
    compact id ``len(vocab_ids)`` stands for every other id of the vocabulary."""

    setting: str
    vocab_ids: torch.Tensor
    vocab_size: int
    other: bool = False

    @property
    def size(self) -> int:
        """M, the number of symbols T can take."""
        return int(self.vocab_ids.numel()) + int(self.other)

    @classmethod
    def build(
        cls,
        setting: str,
        targets: BagTargets,
        vocab_size: int,
        excluded_ids: Sequence[int] = (),
        validation: BagTargets | None = None,
    ) -> Alphabet:
        """The alphabet of ``setting`` fixed by ``targets``, the TRAINING bags (and ``validation``, the
        validation bags, which "top:K" and "min:C" also count).  Never pass held-out bags: the decoder
        scored on them must be fixed without them (docs/theory.md §7)."""
        kind, number = parse_vocab(setting)
        if kind == "auto":
            raise ValueError("vocab='auto' is chosen on validation before an alphabet is built (fastmi.recoverability)")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        parts = [targets] + ([validation] if validation is not None else [])
        for part in parts:
            check_targets(part, vocab_size, excluded_ids)
        allowed = ~_mask(vocab_size, excluded_ids)
        if kind == "full":
            return cls(setting=setting, vocab_ids=torch.nonzero(allowed).flatten(), vocab_size=vocab_size)
        if kind == "top":
            return cls._most_frequent(setting, parts, vocab_size, number, allowed)
        if kind == "min":
            return cls._counted(setting, parts, vocab_size, number, allowed)
        present = torch.zeros(vocab_size, dtype=torch.bool)
        present[targets.ids.cpu()] = True
        vocab_ids = torch.nonzero(present).flatten()
        if vocab_ids.numel() == 0:
            raise ValueError("the alphabet is empty: no target ids were observed in the training sentences")
        return cls(setting=setting, vocab_ids=vocab_ids, vocab_size=vocab_size, other=bool((allowed & ~present).any()))

    @classmethod
    def _most_frequent(
        cls, setting: str, parts: Sequence[BagTargets], vocab_size: int, size: int, allowed: torch.Tensor
    ) -> Alphabet:
        # Ranked by the weight each id has in p(t) = E_S[count_S(t) / n_S] over the training and
        # validation sentences, ties to the smaller id.  The ranking reads tokens only, never
        # embeddings, and no held-out sentence, so f(T) is fixed before the probe is scored.
        mass = torch.zeros(vocab_size, dtype=torch.float64)
        for targets in parts:
            lengths = targets.lengths.double().cpu()
            weights = targets.counts.double().cpu() / lengths[targets.row_index.cpu()]
            mass.index_add_(0, targets.ids.cpu(), weights)
        seen = mass > 0
        observed = int(seen.sum())
        if observed == 0:
            raise ValueError("the alphabet is empty: no target ids were observed")
        if observed <= size and not bool((allowed & ~seen).any()):  # nothing to merge
            return cls(setting=setting, vocab_ids=torch.nonzero(seen).flatten(), vocab_size=vocab_size)
        if observed < size:  # every seen id kept, "other" for the ids no training/validation bag holds
            return cls(setting=setting, vocab_ids=torch.nonzero(seen).flatten(), vocab_size=vocab_size, other=True)
        order = torch.sort(mass, descending=True, stable=True).indices
        kept = torch.sort(order[: size - 1]).values
        return cls(setting=setting, vocab_ids=kept, vocab_size=vocab_size, other=True)

    @classmethod
    def _counted(
        cls, setting: str, parts: Sequence[BagTargets], vocab_size: int, least: int, allowed: torch.Tensor
    ) -> Alphabet:
        # Token counts over the training and validation sentences; like top:K's ranking it reads no
        # embedding and no held-out sentence.
        counts = torch.zeros(vocab_size, dtype=torch.long)
        for targets in parts:
            counts.index_add_(0, targets.ids.cpu(), targets.counts.cpu().long())
        kept = torch.nonzero(counts >= least).flatten()
        if kept.numel() == 0:
            raise ValueError(
                f"the alphabet {setting!r} is empty: no id occurs {least} times in the training and "
                "validation sentences"
            )
        return cls(
            setting=setting, vocab_ids=kept, vocab_size=vocab_size, other=bool((allowed & (counts < least)).any())
        )

    def compact(self, targets: BagTargets) -> BagTargets:
        """``targets`` with vocabulary ids replaced by compact ids (every id outside ``vocab_ids``
        merged into "other", when there is one)."""
        targets.check_vocab(self.vocab_size)
        lookup = torch.full((self.vocab_size,), self.size - 1 if self.other else -1, dtype=torch.long)
        lookup[self.vocab_ids] = torch.arange(self.vocab_ids.numel())
        mapped = lookup[targets.ids.cpu()]
        if mapped.numel() and int(mapped.min()) < 0:
            bad = int(targets.ids.cpu()[mapped < 0][0])
            raise ValueError(f"target id {bad} lies outside the {self.setting!r} alphabet of {self.size} ids")
        return targets.remap(lookup)
