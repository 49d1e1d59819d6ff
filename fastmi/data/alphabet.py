"""The alphabet of T, the token drawn from a sentence, and the compaction of ids onto it.

``"observed"``: the ids that occur in the corpus's bags (M = their count).  ``"full"``: every id of
the tokenizer's vocabulary except the excluded special tokens.  ``"top:K"``: the K-1 most frequent
observed ids plus one "other" symbol standing for every rarer id (M = K).  Every setting trains
the probe on compact ids 0..M-1, so its weight matrix has M rows, never more.

Why "top:K" is still a bound on the same quantity: it probes f(T), a function of T fixed before any
embedding is seen, and I(T; z) >= I(f(T); z) by data processing.  With a few hundred sentences the
rare ids cannot be learned nor their entropy estimated, so they only add noise to both sides of
H(T) - CE; merging them gives a smaller, honest bound that small corpora can actually show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastmi.data.bags import BagTargets

__all__ = ["Alphabet", "VOCAB_SETTINGS"]

VOCAB_SETTINGS = ("observed", "full", "top:K")


def parse_vocab(setting: str) -> tuple[str, int | None]:
    """("observed" | "full", None) or ("top", K) for "top:K"; a clear error otherwise."""
    if setting in ("observed", "full"):
        return setting, None
    if isinstance(setting, str) and setting.startswith("top:"):
        try:
            size = int(setting[4:])
        except ValueError:
            size = 0
        if size >= 2:
            return "top", size
    raise ValueError(f"vocab must be 'observed', 'full' or 'top:K' with an integer K >= 2, got {setting!r}")


@dataclass(frozen=True)
class Alphabet:
    """Compact id i stands for vocabulary id ``vocab_ids[i]`` (sorted ascending); with ``other``,
    compact id ``len(vocab_ids)`` stands for every other observed id."""

    setting: str
    vocab_ids: torch.Tensor
    vocab_size: int
    other: bool = False

    @property
    def size(self) -> int:
        """M, the number of symbols T can take."""
        return int(self.vocab_ids.numel()) + int(self.other)

    @classmethod
    def build(cls, setting: str, targets: BagTargets, vocab_size: int, excluded_ids: Sequence[int] = ()) -> Alphabet:
        kind, top = parse_vocab(setting)
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        targets.check_vocab(vocab_size)
        excluded = torch.zeros(vocab_size, dtype=torch.bool)
        excluded_list = [i for i in excluded_ids if 0 <= i < vocab_size]
        excluded[torch.as_tensor(excluded_list, dtype=torch.long)] = True
        present = torch.zeros(vocab_size, dtype=torch.bool)
        present[targets.ids.cpu()] = True
        if bool((present & excluded).any()):
            bad = int(torch.nonzero(present & excluded)[0])
            raise ValueError(f"target id {bad} is an excluded special token; rebuild the bags without it")
        if kind == "top":
            return cls._most_frequent(setting, targets, vocab_size, top)
        keep = present if kind == "observed" else ~excluded
        vocab_ids = torch.nonzero(keep).flatten()
        if vocab_ids.numel() == 0:
            raise ValueError("the alphabet is empty: no target ids were observed")
        return cls(setting=setting, vocab_ids=vocab_ids, vocab_size=vocab_size)

    @classmethod
    def _most_frequent(cls, setting: str, targets: BagTargets, vocab_size: int, size: int) -> Alphabet:
        # Ranked by the weight each id has in p(t) = E_S[count_S(t) / n_S], ties to the smaller id.
        # The ranking reads tokens only, never embeddings, so f(T) is fixed before the probe sees z.
        lengths = targets.lengths.double().cpu()
        weights = targets.counts.double().cpu() / lengths[targets.row_index.cpu()]
        mass = torch.zeros(vocab_size, dtype=torch.float64).index_add_(0, targets.ids.cpu(), weights)
        observed = int((mass > 0).sum())
        if observed == 0:
            raise ValueError("the alphabet is empty: no target ids were observed")
        if observed <= size:  # nothing to merge: the observed alphabet already has at most K ids
            return cls(setting=setting, vocab_ids=torch.nonzero(mass > 0).flatten(), vocab_size=vocab_size)
        order = torch.sort(mass, descending=True, stable=True).indices
        kept = torch.sort(order[: size - 1]).values
        return cls(setting=setting, vocab_ids=kept, vocab_size=vocab_size, other=True)

    def compact(self, targets: BagTargets) -> BagTargets:
        """``targets`` with vocabulary ids replaced by compact ids (rarer ids merged into "other")."""
        targets.check_vocab(self.vocab_size)
        lookup = torch.full((self.vocab_size,), self.size - 1 if self.other else -1, dtype=torch.long)
        lookup[self.vocab_ids] = torch.arange(self.vocab_ids.numel())
        mapped = lookup[targets.ids.cpu()]
        if mapped.numel() and int(mapped.min()) < 0:
            bad = int(targets.ids.cpu()[mapped < 0][0])
            raise ValueError(f"target id {bad} lies outside the {self.setting!r} alphabet of {self.size} ids")
        return targets.remap(lookup)
