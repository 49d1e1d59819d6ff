"""Layer groups of one probe run: who trains which, saving each as it finishes, resuming, assembling.

:func:`fastmi.recoverability` trains its layers in groups (as many as fit in memory at once).  A
:class:`GroupStore` sits around that loop:

* **Resumable.** Each finished group's table rows and training log are written atomically to
  ``<dir>/<settings digest>/group_<first>-<last>-<digest>.json`` (temporary file, fsync, rename).
  A rerun with the same settings on the same data skips every group found there, so an
  interrupted probe loses at most the group it was training.  A group is reused only for exactly
  its layers and only if those layers' data are unchanged (the cache's unit checksums, or a hash
  of the tensors).
* **Distributed.** Under torch.distributed the unsaved groups are dealt out to the ranks, each
  saves its own, and every rank then reads all groups back, so every rank returns the same result
  (:class:`fastmi.runtime.group_exchange.GroupExchange` does the dealing and the exchange); the
  callers write tables and plots once.  The groups themselves do not depend on the number of
  processes, so N processes give the numbers one process gives.

``<dir>`` is ``checkpoint_dir`` if given, else ``<cache>/probes`` for an activation cache.  Raw
tensors have no home: their groups stay in memory unless ``checkpoint_dir`` is passed (with
several processes they are then exchanged in memory).
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

from fastmi.runtime import distributed
from fastmi.runtime.files import atomic_write_bytes, content_hash
from fastmi.runtime.group_exchange import GroupExchange
from fastmi.runtime.notices import notice

__all__ = ["GroupStore"]

# 2: groups carry per-sentence held-out scores and curve points.  3: the alphabet is fixed by the
# training (and validation) sentences only, never the held-out ones; older groups are recomputed.
FORMAT = "fastmi-probe-group/3"


def _digest(value: Any) -> str:
    return content_hash(value, default=_plain)


def _plain(value: Any) -> Any:
    """numpy / torch scalars and arrays as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a probe group file")


class GroupStore:
    """Saved groups of one probe run (see the module docstring)."""

    def __init__(self, directory: Path | None, data_digests: Mapping[int, str], exchange: GroupExchange) -> None:
        self.directory = directory
        self.data_digests = dict(data_digests)
        self.exchange = exchange
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

        exchange = GroupExchange()
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
            _say_if_outdated(Path(checkpoint_dir), directory)
            failure = exchange.make_directory(directory)
            if failure is not None:  # every rank keeps its groups in memory and they are exchanged there
                distributed.on_main(
                    warnings.warn,
                    f"cannot save probe groups under {checkpoint_dir} ({failure}); an interrupted run will start over",
                    stacklevel=4,
                )
                directory = None
        return cls(directory, digests, exchange)

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

        Which are unsaved is decided once, before anyone trains, and the same list is dealt out on
        every rank, so a resumed run spreads what is left over every rank.
        """
        return self.exchange.deal(lambda: [list(g) for g in groups if self._load(g) is None])

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
        found = self.exchange.gather(self._mine, in_files=self.directory is not None)
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


def _say_if_outdated(checkpoint_dir: Path, directory: Path) -> None:
    """One notice when ``checkpoint_dir`` holds groups of an older format and this run has none saved:
    they were made under another rule (e.g. an alphabet built from the held-out sentences too)."""
    if directory.is_dir() and any(directory.glob("group_*.json")):
        return
    for path in checkpoint_dir.glob("*/group_*.json"):
        try:
            made = json.loads(path.read_text()).get("format")
        except (OSError, ValueError):
            continue
        if made != FORMAT:
            distributed.on_main(
                notice,
                f"probe groups in {checkpoint_dir} were made under an older rule ({made}; now {FORMAT}: "
                "the alphabet is fixed by the training and validation sentences only); recomputing them",
            )
            return


def _tensor_digest(tensor: torch.Tensor) -> str:
    h = hashlib.sha256(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    t = tensor.detach().cpu().contiguous()
    h.update(memoryview((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()).cast("B"))
    return h.hexdigest()
