"""``fastmi.recoverability``: per layer, how well a linear probe recovers a sentence's tokens from
its pooled embedding, and the mutual-information lower bounds that follow (shared/DESIGN.md §1).

Steps: resolve the source (an :class:`fastmi.ActivationCache` or a ``{layer: Tensor[N, d]}`` dict),
compact the target ids onto the alphabet, split sentences into train / validation / held-out
(a :class:`fastmi.data.split.Split`, reusable across models), group layers to fit ``max_memory``, fit
each group as one layer-batched problem (:mod:`fastmi.probe.training`), score it on the held-out rows
(:mod:`fastmi.probe.evaluation`) and turn the per-sentence scores into bounds (:mod:`fastmi.stats.bounds`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastmi.data.alphabet import Alphabet
from fastmi.data.bags import BagTargets
from fastmi.data.split import Split
from fastmi.models.loading import short_model_name
from fastmi.models.unembedding import unembedding_for_alphabet
from fastmi.probe.convergence import warn_unconverged
from fastmi.probe.curves import check_curve, finish_curves, fit_curve_points
from fastmi.probe.evaluation import score_probes
from fastmi.probe.heads import check_probe_form, fit_heads
from fastmi.probe.memory import layer_groups, layers_per_group
from fastmi.probe.precision import resolve_precision
from fastmi.probe.sampled_softmax import parse_train_softmax
from fastmi.probe.training import TrainConfig, standardize
from fastmi.runtime import distributed
from fastmi.stats import bounds
from fastmi.stats.heldout import HeldOut

__all__ = ["recoverability", "ProbeSource", "TrainConfig"]


@dataclass
class ProbeSource:
    """What the probe needs from a cache or from raw tensors, in one shape."""

    layers: list[int]
    load: Callable[[int], torch.Tensor]  # layer -> [N, d]
    targets: BagTargets  # vocabulary ids, one row per sentence
    vocab_size: int
    num_layers: int  # depth used for rel_depth = layer / num_layers
    excluded_ids: list[int] = field(default_factory=list)
    model: str = "embeddings"
    revision: str | None = None
    pooling: str | None = None
    corpus_fingerprint: str | None = None
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_cache(cls, cache: Any, layers: Sequence[int] | None = None) -> ProbeSource:
        meta = dict(cache.metadata)
        available = list(cache.layers)
        chosen = _choose_layers(available, layers)
        return cls(
            layers=chosen,
            load=cache.embeddings,
            targets=cache.targets,
            vocab_size=int(meta["vocab_size"]),
            num_layers=int(meta.get("num_layers") or max(available) or 1),
            excluded_ids=[int(i) for i in meta.get("excluded_ids", [])],
            # the short name, as a sweep gives it: the path says where the model lies, not which it is
            model=short_model_name(meta.get("model", "model")),
            revision=meta.get("revision"),
            pooling=meta.get("pooling"),
            corpus_fingerprint=meta.get("corpus_fingerprint"),
            metadata=meta,
        )

    @classmethod
    def from_tensors(
        cls,
        embeddings: Mapping[Any, torch.Tensor],
        targets: BagTargets | None,
        vocab_size: int | None,
        model: str = "embeddings",
        excluded_ids: Sequence[int] = (),
        layers: Sequence[int] | None = None,
    ) -> ProbeSource:
        if targets is None or vocab_size is None:
            raise ValueError("raw embeddings need targets=BagTargets and vocab_size=M")
        if not embeddings:
            raise ValueError("no layers given: the embeddings dict is empty")
        tensors = {int(layer): torch.as_tensor(x) for layer, x in embeddings.items()}
        for layer, x in tensors.items():
            if x.dim() != 2:
                raise ValueError(f"layer {layer}: embeddings must be [N, d], got shape {tuple(x.shape)}")
        chosen = _choose_layers(sorted(tensors), layers)
        return cls(
            layers=chosen,
            load=tensors.__getitem__,
            targets=targets,
            vocab_size=int(vocab_size),
            num_layers=max(max(tensors), 1),
            excluded_ids=list(excluded_ids),
            model=model,
        )


def _choose_layers(available: Sequence[int], wanted: Sequence[int] | None) -> list[int]:
    if wanted is None:
        return list(available)
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise ValueError(f"layers {missing} are not available; the source has layers {list(available)}")
    return list(wanted)


def _default_max_memory(device: torch.device) -> int:
    """Half of what is free now: the probe shares the machine with the extraction and the OS."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _load_layer(source: ProbeSource, layer: int, rows: int) -> torch.Tensor:
    x = torch.as_tensor(source.load(layer))
    if x.dim() != 2 or x.shape[0] != rows:
        raise ValueError(
            f"layer {layer} has {tuple(x.shape)} embeddings but there are {rows} target rows; "
            "every layer needs one row per sentence"
        )
    x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite.all(dim=1))[0])
        raise ValueError(f"layer {layer} has NaN or infinite embeddings (first at row {row})")
    return x


def recoverability(
    source: Any,
    targets: BagTargets | None = None,
    vocab_size: int | None = None,
    vocab: str = "observed",
    test_fraction: float = 0.2,
    seed: int = 0,
    k: int = 5,
    level: float = 0.95,
    device: str | torch.device | None = None,
    split: Split | None = None,
    layers: Sequence[int] | None = None,
    entropy: str = "plugin",
    validation_fraction: float = 0.1,
    train: TrainConfig | None = None,
    max_memory: int | None = None,
    n_bootstrap: int = 2000,
    model: str | None = None,
    excluded_ids: Sequence[int] = (),
    progress: bool = True,
    probe: str = "linear",
    train_softmax: str = "full",
    unembedding: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    curve: Sequence[float] | None = None,
):
    """Probe every layer of ``source`` and bound I(T; z) per layer; returns a RecoverabilityResult.

    ``source``: an ActivationCache, or ``{layer: Tensor[N, d]}`` with ``targets`` (BagTargets of
    vocabulary ids, N rows) and ``vocab_size``.  ``vocab``: "observed" (M = ids seen in the corpus)
    "full" (M = vocab_size minus ``excluded_ids``), or "top:K" (the K-1 most frequent ids and
    one "other" symbol: a bound on I(f(T); z) <= I(T; z), see :mod:`fastmi.data.alphabet`).
    ``split``: reuse a Split (same corpus) so that
    several models are scored on the same held-out sentences; otherwise one is made from
    ``test_fraction``, ``validation_fraction`` and ``seed``.  ``entropy``: H(T) estimator over all non-empty
    bags, "plugin" (biased low, hence conservative for lower bounds) or "miller_madow".
    ``max_memory``: bytes the layer-batched training may use (default: half the free memory).
    ``probe``: "linear" (logits W z + b) or "unembedding" (logits U (A z + c) + b through the model's
    frozen output embedding U, stored in the cache; raw embeddings pass ``unembedding=U`` or (U, bias)).
    ``train_softmax``: "full" or "sampled:K" (K shared negatives per step); validation and held-out
    scoring are always exact over the whole alphabet (:mod:`fastmi.probe.heads`).
    Each finished layer group is saved (``checkpoint_dir``, default ``<cache>/probes``) and a rerun
    with the same settings resumes; under torch.distributed ranks train disjoint groups and all
    return the whole result (:mod:`fastmi.probe.groups`).
    ``curve``: fractions of the training rows, e.g. (0.125, 0.25, 0.5, 1.0): each layer is also fitted
    on nested subsets of that size, scored on the same held-out rows (``result.curves``, and a
    ``data_limited`` column; see :mod:`fastmi.probe.curves`).  The per-sentence held-out scores are kept in
    ``result.held_out`` for paired comparisons (:func:`fastmi.compare`).
    """
    from fastmi.probe.groups import GroupStore
    from fastmi.results.result import RecoverabilityResult

    if isinstance(source, Mapping):
        probe_source = ProbeSource.from_tensors(
            source, targets, vocab_size, model=model or "embeddings", excluded_ids=excluded_ids, layers=layers
        )
    else:
        if targets is not None or vocab_size is not None:
            raise ValueError("targets and vocab_size are read from the cache; pass them only with raw embeddings")
        probe_source = ProbeSource.from_cache(source, layers=layers)
        if model:
            probe_source.model = model
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    train = train or TrainConfig()
    check_probe_form(probe)
    parse_train_softmax(train_softmax)
    progress = progress and distributed.context().is_main
    fractions = check_curve(curve)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    src = probe_source
    num_rows = src.targets.num_rows

    alphabet = Alphabet.build(vocab, src.targets, src.vocab_size, src.excluded_ids)
    bags = alphabet.compact(src.targets)
    head_weight, head_bias, head_source = (
        unembedding_for_alphabet(source, alphabet.vocab_ids, alphabet.other, unembedding)
        if probe == "unembedding"
        else (None, None, None)
    )
    if split is None:
        split = Split.make(num_rows, test_fraction, seed, validation_fraction, src.corpus_fingerprint)
    split.check(num_rows, src.corpus_fingerprint)

    nonempty = (bags.lengths > 0).numpy()
    part_rows = {
        name: rows[nonempty[rows]]
        for name, rows in (("train", split.train), ("validation", split.validation), ("test", split.test))
    }
    for name, rows in part_rows.items():
        if rows.size == 0:
            raise ValueError(f"the {name} part of the split has no sentence with a non-empty bag")
    part_bags = {name: bags.select(rows).to(device) for name, rows in part_rows.items()}
    # H(T) is a property of the corpus, not of the probe: every non-empty sentence estimates it.
    # The plug-in estimate is biased low, more so on fewer sentences, so this is still conservative.
    entropy_bits = bounds.token_entropy_bits(bags, method=entropy)

    # Layers are checked before any training so a bad layer fails fast and nothing is half-done.
    first = _load_layer(src, src.layers[0], num_rows)
    dim = first.shape[1]
    del first  # only one group of layers is ever in memory
    budget = max_memory if max_memory is not None else _default_max_memory(device)
    # The planner sizes groups with this same memory model (fastmi.probe.memory), so a plan is what runs.
    group_size = layers_per_group(
        budget,
        len(src.layers),
        num_rows,
        dim,
        alphabet.size,
        train.batch_size,
        precision=resolve_precision(train.precision, device),
        train_softmax=train_softmax,
        probe=probe,
    )
    groups = layer_groups(src.layers, group_size)

    rows_out: list[dict] = []
    training_log: dict[str, Any] = {}
    index = {name: torch.as_tensor(rows, device=device) for name, rows in part_rows.items()}
    groups = distributed.broadcast(groups)  # free memory differs between ranks: all train rank 0's groups
    # Everything that changes the numbers of a group (the groups themselves are matched layer by layer).
    store = GroupStore.open(
        source,
        src.layers,
        checkpoint_dir=checkpoint_dir,
        settings=dict(
            model=src.model,
            vocab=vocab,
            alphabet_size=alphabet.size,
            k=k,
            level=level,
            seed=seed,
            entropy=entropy,
            n_bootstrap=n_bootstrap,
            train=asdict(train),
            split=split.to_dict(),
            excluded_ids=list(src.excluded_ids),
            probe=probe,
            train_softmax=train_softmax,
            curve=list(fractions or ()),
        ),
    )
    mine = store.pending(groups)  # this rank's groups not saved by an earlier run
    test_rows = part_rows["test"].astype(np.int64)
    for group in tqdm(mine, desc=f"{src.model}: layer groups", disable=not progress or len(groups) == 1):
        z = torch.stack([_load_layer(src, layer, num_rows) for layer in group]).to(device)
        if z.shape[-1] != dim:
            raise ValueError(f"layers {group} have width {z.shape[-1]}, layer {src.layers[0]} has {dim}")
        if probe == "linear":  # the unembedding probe folds the standardisation into A and c itself
            z = standardize(z, index["train"])
        fitted = fit_heads(
            z[:, index["train"]],
            part_bags["train"],
            z[:, index["validation"]],
            part_bags["validation"],
            alphabet.size,
            train,
            probe=probe,
            train_softmax=train_softmax,
            unembedding=(head_weight, head_bias),
            seed=seed,
            progress=progress,
            description=f"{src.model} layers {group[0]}-{group[-1]}",
        )
        scores = score_probes(
            fitted.features(z[:, index["test"]]), fitted.weight, fitted.bias, part_bags["test"], alphabet.size, k
        )
        group_held, group_points = HeldOut(rows=test_rows), []
        if fractions:
            fit = functools.partial(
                fit_heads, probe=probe, train_softmax=train_softmax, unembedding=(head_weight, head_bias)
            )
            group_points = fit_curve_points(
                z,
                index,
                part_bags,
                alphabet.size,
                fractions,
                group,
                src.model,
                entropy_bits,
                train,
                seed,
                k,
                level,
                n_bootstrap,
                progress,
                fit=fit,
            )
        del z
        for i, layer in enumerate(group):
            row = {
                "model": src.model,
                "revision": src.revision,
                "layer": layer,
                "rel_depth": layer / src.num_layers,
                "pooling": src.pooling,
                "vocab": vocab,
                "M": alphabet.size,
                "n_train": int(part_rows["train"].size),
                "n_test": int(part_rows["test"].size),
                "n_skipped": int((~nonempty).sum()),
                "bag_recall": float(scores.bag_recall[i].mean()),
                "probe": probe,
                "train_softmax": train_softmax,
                "converged": bool(fitted.converged[i]),
            }
            row.update(
                bounds.layer_bounds(
                    scores.errors[i].numpy(),
                    scores.errors_k[i].numpy(),
                    scores.ce_bits[i].numpy(),
                    entropy_bits,
                    alphabet.size,
                    k,
                    level=level,
                    seed=seed,
                    n_bootstrap=n_bootstrap,
                )
            )
            rows_out.append(row)
            group_held.add(
                layer,
                errors=scores.errors[i].numpy(),
                errors_k=scores.errors_k[i].numpy(),
                ce_bits=scores.ce_bits[i].numpy(),
            )
            training_log[str(layer)] = {
                "best_epoch": fitted.best_epoch[i],
                "validation_ce_bits": float(fitted.validation_ce_nats[i] / np.log(2)),
                "epochs_run": fitted.epochs_run,
                "start": fitted.start[i],
            }
        # Per-sentence scores and curve points travel with the group, so a resumed or multi-process
        # run keeps what compare() and the curves need.
        store.save(
            group,
            rows_out[-len(group) :],
            {str(layer): training_log[str(layer)] for layer in group},
            extra={"held_out": group_held.to_dict()["layers"], "curve_points": group_points},
        )
    rows_out, training_log, extras = store.collect(groups)
    held = HeldOut(rows=test_rows).to_dict()
    for extra in extras:
        held["layers"].update(extra["held_out"])
    held_out = HeldOut.from_dict(held)
    curve_points = [point for extra in extras for point in extra["curve_points"]]
    warn_unconverged(src.model, rows_out, train.max_epochs)

    config = {
        "model": src.model,
        "revision": src.revision,
        "pooling": src.pooling,
        "vocab": vocab,
        "alphabet_size": alphabet.size,
        "vocab_size": src.vocab_size,
        "k": k,
        "level": level,
        "seed": seed,
        "entropy_method": entropy,
        "n_bootstrap": n_bootstrap,
        "layers": list(src.layers),
        "layer_groups": [list(g) for g in groups],
        "device": str(device),
        "train": asdict(train),
        "probe": probe,
        "train_softmax": train_softmax,
        "unembedding_source": head_source,
        "training": training_log,
        "split": split.to_dict(),
        "source": {key: value for key, value in src.metadata.items() if _is_json_scalar(value)},
    }
    if fractions:
        config["curve"] = list(fractions)
    curves = finish_curves(rows_out, curve_points) if fractions else []
    return RecoverabilityResult(rows_out, config, {src.model: held_out}, curves)


def _is_json_scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (str, int, float, bool))
        or (isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value))
    )
