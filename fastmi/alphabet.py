"""The alphabet of T, the token drawn from a sentence, and the compaction of ids onto it.

``"observed"``: the ids that occur in the corpus's bags (M = their count).  ``"full"``: every id of
the tokenizer's vocabulary except the excluded special tokens.  Either way the probe trains on
compact ids 0..M-1, so its weight matrix has M rows, never more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .bags import BagTargets

__all__ = ["Alphabet", "VOCAB_SETTINGS"]

VOCAB_SETTINGS = ("observed", "full")


@dataclass(frozen=True)
class Alphabet:
    """Compact id i stands for vocabulary id ``vocab_ids[i]`` (sorted ascending)."""

    setting: str
    vocab_ids: torch.Tensor
    vocab_size: int

    @property
    def size(self) -> int:
        """M, the number of symbols T can take."""
        return int(self.vocab_ids.numel())

    @classmethod
    def build(
        cls, setting: str, targets: BagTargets, vocab_size: int, excluded_ids: Sequence[int] = ()
    ) -> "Alphabet":
        if setting not in VOCAB_SETTINGS:
            raise ValueError(f"vocab must be one of {VOCAB_SETTINGS}, got {setting!r}")
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
        keep = present if setting == "observed" else ~excluded
        vocab_ids = torch.nonzero(keep).flatten()
        if vocab_ids.numel() == 0:
            raise ValueError("the alphabet is empty: no target ids were observed")
        return cls(setting=setting, vocab_ids=vocab_ids, vocab_size=vocab_size)

    def compact(self, targets: BagTargets) -> BagTargets:
        """``targets`` with vocabulary ids replaced by compact ids (a monotone map: rows stay sorted)."""
        targets.check_vocab(self.vocab_size)
        lookup = torch.full((self.vocab_size,), -1, dtype=torch.long)
        lookup[self.vocab_ids] = torch.arange(self.size)
        mapped = lookup[targets.ids.cpu()]
        if mapped.numel() and int(mapped.min()) < 0:
            bad = int(targets.ids.cpu()[mapped < 0][0])
            raise ValueError(f"target id {bad} lies outside the {self.setting!r} alphabet of {self.size} ids")
        return BagTargets(targets.offsets, mapped.to(targets.ids.device), targets.counts)
