"""Layer groups of one probe run: who trains which, saving each as it finishes, resuming, assembling.

:func:`fastmi.recoverability` trains its layers in groups (as many as fit in memory at once).  A
:class:`GroupStore` sits around that loop:

* **Resumable.** Each finished group's table rows and training log are written atomically to
  ``<dir>/<settings digest>/group_<first>-<last>-<digest>.json`` (temporary file, fsync, rename).
  A rerun with the same settings on the same data skips every group found there, so an
  interrupted probe loses at most the group it was training.  A group is reused only for exactly
  its layers and only if those layers' data are unchanged (the cache's unit checksums, or a hash
  of the tensors).
* **Distributed.** Under torch.distributed, rank r trains unsaved groups r, r + world, ... (whole
  groups, as EleutherAI's sparsify deals modules out to ranks), saves each, waits for the others, and
  then every rank reads all groups back, so every rank returns the same result; rank 0 alone
  writes tables and plots (the callers do that).  The groups themselves do not depend on the
  number of processes, so N processes give the numbers one process gives.

``<dir>`` is ``checkpoint_dir`` if given, else ``<cache>/probes`` for an activation cache.  Raw
tensors have no home: their groups stay in memory unless ``checkpoint_dir`` is passed (with
several processes they are then exchanged through torch.distributed).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fastmi.activations.cache import atomic_write_bytes
from fastmi.runtime import distributed

__all__ = ["GroupStore"]

FORMAT = "fastmi-probe-group/2"  # 2: groups carry per-sentence held-out scores and curve points


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_plain).encode()).hexdigest()


def _plain(value: Any) -> Any:
    """numpy / torch scalars and arrays as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a probe group file")


class GroupStore:
    """Saved groups of one probe run (see the module docstring)."""

    def __init__(self, directory: Path | None, data_digests: Mapping[int, str], ctx: distributed.Context) -> None:
        self.directory = directory
        self.data_digests = dict(data_digests)
        self.ctx = ctx
        self._mine: dict[tuple[int, ...], tuple[list[dict], dict, dict]] = {}

    @classmethod
    def open(
        cls,
        source: Any,
        layers: Sequence[int],
        settings: Mapping[str, Any],
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> GroupStore:
        """The store for probing ``layers`` of ``source`` (an ActivationCache or ``{layer: Tensor}``)
        with ``settings`` (everything that changes the numbers)."""
        from fastmi.activations.cache import ActivationCache

        ctx = distributed.context()
        is_cache = isinstance(source, ActivationCache)
        if checkpoint_dir is None and is_cache:
            checkpoint_dir = Path(source.directory) / "probes"
        if is_cache:
            identity = source.identity
            digests = {l: _digest([identity, source.layer_units(l)]) for l in layers}
        elif checkpoint_dir is not None:
            digests = {l: _tensor_digest(torch.as_tensor(source[l])) for l in layers}
        else:
            digests = {}
        directory = None
        if checkpoint_dir is not None:
            directory = Path(checkpoint_dir) / _digest(dict(settings))[:16]
            try:
                with distributed.main_first(ctx) as main:
                    if main:
                        directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                if ctx.distributed:
                    raise
                warnings.warn(
                    f"cannot save probe groups under {checkpoint_dir} ({err}); an interrupted run will start over",
                    stacklevel=3,
                )
                directory = None
        return cls(directory, digests, ctx)

    # ---- files --------------------------------------------------------------------------------
    def _path(self, group: Sequence[int]) -> Path:
        assert self.directory is not None
        return self.directory / f"group_{group[0]:03d}-{group[-1]:03d}-{_digest(list(group))[:8]}.json"

    def _load(self, group: Sequence[int]) -> tuple[list[dict], dict, dict] | None:
        """The saved result of exactly ``group`` on the same data, or None."""
        if self.directory is None:
            return None
        path = self._path(group)
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # not ours to trust; it is redone and replaced
            warnings.warn(f"{path} is unreadable; training its layers again", stacklevel=3)
            return None
        wanted = {str(l): self.data_digests[l] for l in group}
        if saved.get("format") != FORMAT or saved.get("layers") != list(group) or saved.get("data") != wanted:
            return None
        return saved["rows"], saved["training"], saved.get("extra", {})

    # ---- the loop -----------------------------------------------------------------------------
    def pending(self, groups: Sequence[Sequence[int]]) -> list[list[int]]:
        """This rank's share of the ``groups`` that no earlier run has saved.

        Rank 0 decides which are unsaved (before anyone trains) and tells the others, so that all
        ranks deal out the same list, and a resumed run spreads what is left over every rank.
        """
        unsaved = distributed.broadcast(
            [list(g) for g in groups if self._load(g) is None] if self.ctx.is_main else None
        )
        return distributed.my_share(unsaved, self.ctx)

    def save(
        self,
        group: Sequence[int],
        rows: Sequence[dict],
        training: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a finished group (atomically, if there is a directory); ``extra``: any other JSON-able
        per-group output (the probe keeps its per-sentence held-out scores and curve points there)."""
        rows, training, extra = json.loads(json.dumps([list(rows), dict(training), dict(extra or {})], default=_plain))
        self._mine[tuple(group)] = (rows, training, extra)
        if self.directory is not None:
            record = {
                "format": FORMAT,
                "layers": list(group),
                "rows": rows,
                "training": training,
                "extra": extra,
                "data": {str(l): self.data_digests[l] for l in group},
            }
            atomic_write_bytes(self._path(group), json.dumps(record, sort_keys=True).encode())

    def collect(self, groups: Sequence[Sequence[int]]) -> tuple[list[dict], dict, list[dict]]:
        """Rows (in group order), training logs and the extras (one per group) of every group, once all
        ranks are done."""
        found: dict[tuple[int, ...], tuple[list[dict], dict, dict]] = dict(self._mine)
        if self.directory is None and self.ctx.distributed:
            for theirs in distributed.all_gather(self._mine):
                found.update(theirs)
        else:
            distributed.barrier()
        rows: list[dict] = []
        training: dict = {}
        extras: list[dict] = []
        for group in groups:
            saved = found.get(tuple(group)) or self._load(group)
            if saved is None:
                raise RuntimeError(
                    f"the probe of layers {list(group)} was not saved by any rank (see "
                    f"{self.directory}); rerun to train it"
                )
            rows.extend(saved[0])
            training.update(saved[1])
            extras.append(saved[2])
        return rows, training, extras


def _tensor_digest(tensor: torch.Tensor) -> str:
    h = hashlib.sha256(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    t = tensor.detach().cpu().contiguous()
    h.update(memoryview((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()).cast("B"))
    return h.hexdigest()
