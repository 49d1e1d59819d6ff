"""Bag-of-tokens targets in CSR form.

Row b of a :class:`BagTargets` is one sentence: the distinct token ids ``ids[offsets[b]:offsets[b+1]]``
with their counts.  The probe's loss and all error rates are functions of these bags only, so
they are built once per (corpus, tokenizer) and shared by every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BagTargets", "count_bags"]


@dataclass(frozen=True)
class BagTargets:
    """CSR bags: ``offsets`` int64 [N+1], ``ids`` int64 [nnz], ``counts`` int64 [nnz].

    Within a row, ids are distinct and sorted ascending.  A row may be empty (a sentence made only
    of excluded special tokens); consumers skip such rows and say how many they skipped.
    """

    offsets: torch.Tensor
    ids: torch.Tensor
    counts: torch.Tensor

    def __post_init__(self) -> None:
        offsets, ids, counts = (torch.as_tensor(t) for t in (self.offsets, self.ids, self.counts))
        for name, t in (("offsets", offsets), ("ids", ids), ("counts", counts)):
            if t.dim() != 1:
                raise ValueError(f"BagTargets.{name} must be 1-D, got shape {tuple(t.shape)}")
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
                raise TypeError(f"BagTargets.{name} must be an integer tensor, got {t.dtype}")
        # Stored as int64 on whatever device they came on; the kernels read them as is.
        object.__setattr__(self, "offsets", offsets.long())
        object.__setattr__(self, "ids", ids.long())
        object.__setattr__(self, "counts", counts.long())
        self._check_structure()

    def _check_structure(self) -> None:
        o, ids, c = self.offsets, self.ids, self.counts
        if o.numel() == 0 or int(o[0]) != 0:
            raise ValueError("BagTargets.offsets must start at 0 and have N+1 entries")
        if int(o[-1]) != ids.numel():
            raise ValueError(f"BagTargets.offsets[-1] = {int(o[-1])} but there are {ids.numel()} ids")
        if ids.numel() != c.numel():
            raise ValueError(f"BagTargets has {ids.numel()} ids but {c.numel()} counts")
        if o.numel() > 1 and bool((o[1:] < o[:-1]).any()):
            bad = int(torch.nonzero(o[1:] < o[:-1])[0])
            raise ValueError(f"BagTargets.offsets must be non-decreasing (offsets[{bad + 1}] < offsets[{bad}])")
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError(f"BagTargets.ids must be non-negative, found {int(ids.min())}")
        if c.numel() and int(c.min()) <= 0:
            raise ValueError(f"BagTargets.counts must be positive, found {int(c.min())}")

    # ---- shape -----------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return self.offsets.numel() - 1

    def __len__(self) -> int:
        return self.num_rows

    @property
    def bag_sizes(self) -> torch.Tensor:
        """Number of distinct ids per row, int64 [N]."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def lengths(self) -> torch.Tensor:
        """Number of tokens per row (sum of counts), int64 [N]; the C of the loss."""
        sums = torch.zeros(self.num_rows, dtype=torch.long, device=self.counts.device)
        return sums.index_add_(0, self.row_index, self.counts)

    @property
    def row_index(self) -> torch.Tensor:
        """Row of each stored id, int64 [nnz]."""
        return torch.repeat_interleave(
            torch.arange(self.num_rows, device=self.offsets.device), self.bag_sizes, output_size=self.ids.numel()
        )

    @property
    def max_id(self) -> int:
        return int(self.ids.max()) if self.ids.numel() else -1

    # ---- checks and views --------------------------------------------------------------------
    def id_bounds(self) -> tuple[int, int]:
        """(low, high) with low <= every id <= high; (0, -1) without ids.

        Computed once (one host sync) and cached; a ``select``-ed subset inherits its parent's
        bounds, which contain its ids, so the fused ops validate a training batch without a sync.
        """
        bounds = self.__dict__.get("_id_bounds")
        if bounds is None:
            bounds = (int(self.ids.min()), int(self.ids.max())) if self.ids.numel() else (0, -1)
            object.__setattr__(self, "_id_bounds", bounds)
        return bounds

    def check_vocab(self, vocab_size: int) -> None:
        """Raise a clear error if any id is outside ``[0, vocab_size)``."""
        if self.ids.numel() and self.max_id >= vocab_size:
            row = int(self.row_index[torch.argmax(self.ids)])
            raise ValueError(
                f"target id {self.max_id} (row {row}) is out of range for an alphabet of size {vocab_size}"
            )

    def select(self, rows: torch.Tensor | Sequence[int] | np.ndarray) -> BagTargets:
        """The bags of ``rows`` (in that order), as a new BagTargets."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.offsets.device)
        starts, sizes = self.offsets[rows], self.bag_sizes[rows]
        offsets = torch.zeros(rows.numel() + 1, dtype=torch.long, device=rows.device)
        torch.cumsum(sizes, 0, out=offsets[1:])
        nnz = int(offsets[-1])  # the one host sync: the subset's size
        gather = torch.repeat_interleave(starts - offsets[:-1], sizes, output_size=nnz) + torch.arange(
            nnz, device=rows.device
        )
        # A subset of valid bags is valid: built without __post_init__'s checks (and their syncs).
        subset = BagTargets._trusted(offsets, self.ids[gather], self.counts[gather])
        object.__setattr__(subset, "_id_bounds", self.id_bounds())
        return subset

    @classmethod
    def _trusted(cls, offsets: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> BagTargets:
        """A BagTargets of int64 tensors already known to be valid, without the checks."""
        bags = object.__new__(cls)
        for name, t in (("offsets", offsets), ("ids", ids), ("counts", counts)):
            object.__setattr__(bags, name, t)
        return bags

    def to(self, device: torch.device | str) -> BagTargets:
        return BagTargets(self.offsets.to(device), self.ids.to(device), self.counts.to(device))

    def remap(self, mapping: torch.Tensor) -> BagTargets:
        """Ids replaced by ``mapping[id]``; ids that land on the same new id in a row are merged
        (counts added), and rows come back sorted.  Used to compact ids onto an alphabet."""
        new_ids = mapping.to(self.ids.device)[self.ids]
        if new_ids.numel() == 0:
            return BagTargets(self.offsets, new_ids, self.counts)
        # Row-major keys: unique() sorts them, which sorts rows and the ids within each row at once.
        width = int(new_ids.max()) + 1
        keys, slot = torch.unique(self.row_index * width + new_ids, return_inverse=True)
        counts = torch.zeros(keys.numel(), dtype=torch.long, device=keys.device).index_add_(0, slot, self.counts)
        sizes = torch.bincount(keys // width, minlength=self.num_rows)
        offsets = torch.zeros(self.num_rows + 1, dtype=torch.long, device=keys.device)
        torch.cumsum(sizes, 0, out=offsets[1:])
        return BagTargets(offsets, keys % width, counts)

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"offsets": self.offsets.contiguous(), "ids": self.ids.contiguous(), "counts": self.counts.contiguous()}

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> BagTargets:
        return cls(tensors["offsets"], tensors["ids"], tensors["counts"])

    @classmethod
    def from_token_lists(
        cls, token_lists: Sequence[Sequence[int]], exclude: Sequence[int] = (), vocab_size: int | None = None
    ) -> BagTargets:
        """Bags of python lists of token ids, dropping ids in ``exclude`` (special tokens)."""
        lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
        token_offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=token_offsets[1:])
        flat = np.fromiter((i for t in token_lists for i in t), dtype=np.int64, count=int(token_offsets[-1]))
        return count_bags(flat, token_offsets, exclude, vocab_size)

    def __repr__(self) -> str:
        return f"BagTargets(rows={self.num_rows}, nnz={self.ids.numel()}, max_id={self.max_id})"


def count_bags(
    tokens: np.ndarray, token_offsets: np.ndarray, exclude: Sequence[int] = (), vocab_size: int | None = None
) -> BagTargets:
    """Count distinct ids per sentence: ``tokens[token_offsets[r]:token_offsets[r+1]]`` is sentence r."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    token_offsets = np.ascontiguousarray(token_offsets, dtype=np.int64)
    if tokens.size and tokens.min() < 0:
        raise ValueError(f"token ids must be non-negative, found {tokens.min()}")
    if vocab_size is not None and tokens.size and tokens.max() >= vocab_size:
        raise ValueError(f"token id {tokens.max()} is out of range for a vocabulary of size {vocab_size}")
    upper = int(max(tokens.max(initial=-1), max(exclude, default=-1))) + 1
    excluded = np.zeros(max(upper, 1), dtype=np.bool_)
    excluded[np.asarray(list(exclude), dtype=np.int64)] = True
    # numba (compiled loops, imported here: a process that never counts bags never loads it)
    from fastmi.data._bag_counting import distinct_per_row, fill_bags
    from fastmi.kernels._threads import torch_thread_budget

    with torch_thread_budget():  # numba would otherwise leave torch on every core
        sizes = distinct_per_row(tokens, token_offsets, excluded)
        offsets = np.zeros(sizes.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=np.int64)
        counts = np.empty(int(offsets[-1]), dtype=np.int64)
        fill_bags(tokens, token_offsets, excluded, offsets, ids, counts)
    return BagTargets(torch.from_numpy(offsets), torch.from_numpy(ids), torch.from_numpy(counts))
