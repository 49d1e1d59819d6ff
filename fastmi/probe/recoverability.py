"""``fastmi.recoverability``: per layer, how well a linear probe recovers a sentence's tokens from
its pooled embedding, and the mutual-information lower bounds that follow (shared/DESIGN.md §1).

Steps: resolve the source (an :class:`fastmi.ActivationCache` or a ``{layer: Tensor[N, d]}`` dict),
compact the target ids onto the alphabet, split sentences into train / validation / held-out
(a :class:`fastmi.data.split.Split`, reusable across models), group layers to fit ``max_memory``, fit
each group as one layer-batched problem (:mod:`fastmi.probe.training`), score it on the held-out rows
(:mod:`fastmi.probe.evaluation`) and turn the per-sentence scores into bounds (:mod:`fastmi.stats.bounds`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastmi.data.alphabet import Alphabet, check_targets
from fastmi.data.bags import BagTargets
from fastmi.data.split import Split
from fastmi.probe.config import ProbeConfig, TrainConfig
from fastmi.probe.convergence import warn_seed_spread, warn_unconverged
from fastmi.probe.curves import finish_curves, fit_curve_points
from fastmi.probe.evaluation import score_probes
from fastmi.probe.group_fit import group_features
from fastmi.probe.head_rows import head_rows
from fastmi.probe.identity import open_store, result_config
from fastmi.probe.memory import layer_groups, layers_per_group
from fastmi.probe.precision import resolve_precision
from fastmi.probe.seeds import seed_log, seed_mean, seed_statistics_of
from fastmi.probe.source import ProbeSource, default_max_memory, load_layer
from fastmi.runtime import distributed
from fastmi.stats import bounds
from fastmi.stats.bootstrap import check_resamples, resample_counts
from fastmi.stats.heldout import HeldOut
from fastmi.stats.heldout_entropy import Frequencies, HeldOutEntropy

__all__ = [
    "recoverability",
    "prepare",
    "probe_group",
    "assemble",
    "ProbeRun",
    "ProbeConfig",
    "ProbeSource",
    "TrainConfig",
]

PARTS = ("train", "validation", "test")


def recoverability(
    source: Any,
    config: ProbeConfig | None = None,
    *,
    targets: BagTargets | None = None,
    vocab_size: int | None = None,
    split: Split | None = None,
    layers: Sequence[int] | None = None,
    model: str | None = None,
    excluded_ids: Sequence[int] = (),
    progress: bool = True,
    unembedding: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    **overrides: Any,
):
    """Probe every layer of ``source`` and bound I(T; z) per layer; returns a RecoverabilityResult.

    ``source``: an ActivationCache, or ``{layer: Tensor[N, d]}`` with ``targets`` (BagTargets of
    vocabulary ids, N rows) and ``vocab_size``.  ``config``: the probe's settings
    (:class:`fastmi.probe.config.ProbeConfig`, default: its defaults); any of its fields may also be
    passed by name and overrides it, ``recoverability(cache, vocab="top:512", seed=0)``.  Among them:
    ``vocab``: "observed" (the ids of the training sentences and one "other" symbol, its bias calibrated
    on the validation sentences), "full" (M = vocab_size minus ``excluded_ids``), or "top:K" (the K-1
    ids most frequent in the training and validation sentences and "other"); each a bound on
    I(f(T); z) <= I(T; z), the alphabet never built from held-out sentences (:mod:`fastmi.data.alphabet`);
    ``entropy``: H(f(T)) estimator on the held-out sentences (recomputed in each bootstrap resample, so
    every lcb includes its error), "plugin" (biased
    low, hence conservative for lower bounds) or "miller_madow"; ``max_memory``: bytes the
    layer-batched training may use (default: half the free memory); ``probe``: "linear" (logits
    W z + b), "embedding" (the same, started from the model's rows), "unembedding" (logits
    U (A z + c) + b through the model's frozen output embedding U, stored in the cache; raw
    embeddings pass ``unembedding=U`` or (U, bias)) or "auto", the default (embedding and
    unembedding both, the better on validation kept per layer, :mod:`fastmi.probe.form_choice`;
    linear where they cannot train); ``train_softmax``:
    "full" or "sampled:K" (K shared negatives per step; validation and held-out scoring are always
    exact over the whole alphabet, :mod:`fastmi.probe.heads`); ``curve``: fractions of the training
    rows, e.g. (0.125, 0.25, 0.5, 1.0): each layer is also fitted on nested subsets of that size,
    scored on the same held-out rows (``result.curves``, and a ``data_limited`` column; see
    :mod:`fastmi.probe.curves`).

    ``split``: reuse a Split (same corpus) so that several models are scored on the same held-out
    sentences; otherwise one is made from ``test_fraction``, ``validation_fraction`` and ``seed``.
    Each finished layer group is saved (``checkpoint_dir``, default ``<cache>/probes``) and a rerun
    with the same settings resumes; under torch.distributed ranks train disjoint groups and all
    return the whole result (:mod:`fastmi.probe.groups`).  The per-sentence held-out scores are kept
    in ``result.held_out`` for paired comparisons (:func:`fastmi.compare`).
    """
    config = ProbeConfig.resolve(config, overrides, "recoverability")
    run = prepare(
        source,
        config,
        targets=targets,
        vocab_size=vocab_size,
        split=split,
        layers=layers,
        model=model,
        excluded_ids=excluded_ids,
        progress=progress,
        unembedding=unembedding,
        checkpoint_dir=checkpoint_dir,
    )
    mine = run.store.pending(run.groups)  # this rank's groups not saved by an earlier run
    one_bar = not run.progress or len(run.groups) == 1  # a single group: its epoch bar is enough
    for group in tqdm(mine, desc=f"{run.source.model}: layer groups", disable=one_bar):
        probe_group(run, group)
    return assemble(run)


@dataclass
class ProbeRun:
    """What every layer group of one probe shares, made once before any training (:func:`prepare`)."""

    config: ProbeConfig
    probe: str  # the form trained: config.probe, with "auto" resolved (:func:`head_rows`)
    source: ProbeSource
    device: torch.device
    alphabet: Alphabet
    split: Split
    rows: dict[str, np.ndarray]  # per part ("train", "validation", "test"): its sentences with a non-empty bag
    bags: dict[str, BagTargets]  # their bags over the alphabet, on the device
    index: dict[str, torch.Tensor]  # ``rows`` on the device
    skipped: int  # sentences with an empty bag
    entropy: HeldOutEntropy  # H(f(T)) on the held-out sentences, and in each bootstrap resample
    frequencies: Frequencies  # the held-out bags, kept in the result for comparisons
    width: int  # d, the width every layer must have
    # (U, b_model) of the unembedding probe; ([(name, rows), ...], None) of the embedding probe
    head: tuple[Any, torch.Tensor | None]
    head_source: str | None
    groups: list[list[int]]
    store: Any  # fastmi.probe.groups.GroupStore
    progress: bool
    vocab_choice: dict | None = None  # vocab="auto": each trial's validation bounds (fastmi.probe.alphabet_choice)


def prepare(
    source: Any,
    config: ProbeConfig,
    *,
    targets: BagTargets | None = None,
    vocab_size: int | None = None,
    split: Split | None = None,
    layers: Sequence[int] | None = None,
    model: str | None = None,
    excluded_ids: Sequence[int] = (),
    progress: bool = True,
    unembedding: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    trial: bool = False,
) -> ProbeRun:
    """Everything before training: the source, the alphabet (vocab="auto": the map chosen on validation,
    :mod:`fastmi.probe.alphabet_choice`), the split and its parts, H(T), the unembedding of the
    alphabet (probe="unembedding"), the layer groups and their store.  ``trial=True``: a trial of
    vocab="auto", whose fits are not the result's: no store, and the alphabet fixed by the training
    sentences alone, so that the validation sentences it is judged on are new to every map."""
    if config.vocab == "auto":
        from fastmi.probe.alphabet_choice import resolve_auto_vocab

        data = dict(targets=targets, vocab_size=vocab_size, split=split, model=model, excluded_ids=excluded_ids)
        data.update(progress=progress, unembedding=unembedding, layers=layers)
        vocab, choice = resolve_auto_vocab(source, config, checkpoint_dir, **data)
        run = prepare(source, dataclasses.replace(config, vocab=vocab), checkpoint_dir=checkpoint_dir, **data)
        run.vocab_choice = choice
        return run
    src = ProbeSource.of(source, targets, vocab_size, model=model, excluded_ids=excluded_ids, layers=layers)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_rows = src.targets.num_rows
    if split is None:
        split = config.make_split(num_rows, src.corpus_fingerprint)
    split.check(num_rows, src.corpus_fingerprint)
    nonempty = (src.targets.lengths > 0).numpy()
    rows = _part_rows(split, nonempty)
    # The alphabet is fixed by the training (and, for top:K, validation) sentences only: the decoder
    # scored on the held-out sentences never depends on them (docs/theory.md §7).
    check_targets(src.targets, src.vocab_size, src.excluded_ids)
    alphabet = Alphabet.build(
        config.vocab,
        src.targets.select(rows["train"]),
        src.vocab_size,
        src.excluded_ids,
        validation=None if trial else src.targets.select(rows["validation"]),
    )
    bags = alphabet.compact(src.targets)
    probe, head_weight, head_bias, head_source = head_rows(source, alphabet, unembedding, config)
    # H(f(T)) is estimated on the held-out sentences, in each bootstrap resample together with the
    # error terms (the same resamples), so every lcb includes its sampling error (docs/theory.md §6).
    frequencies = Frequencies.of(bags.select(rows["test"]))
    counts = resample_counts(frequencies.n, check_resamples(config.n_bootstrap), config.seed, "draws")
    entropy = HeldOutEntropy.estimate(frequencies, counts, config.entropy)
    # Layers are checked before any training so a bad layer fails fast and nothing is half-done.
    width = load_layer(src, src.layers[0], num_rows).shape[1]  # only one group of layers is ever in memory
    # free memory differs between ranks: all train rank 0's groups
    groups = distributed.broadcast(_groups(config, probe, src, num_rows, width, alphabet.size, device))
    return ProbeRun(
        config=config,
        probe=probe,
        source=src,
        device=device,
        alphabet=alphabet,
        split=split,
        rows=rows,
        bags={name: bags.select(part).to(device) for name, part in rows.items()},
        index={name: torch.as_tensor(part, device=device) for name, part in rows.items()},
        skipped=int((~nonempty).sum()),
        entropy=entropy,
        frequencies=frequencies,
        width=width,
        head=(head_weight, head_bias),
        head_source=head_source,
        groups=groups,
        store=None if trial else open_store(source, src, config, alphabet.size, split, checkpoint_dir),
        progress=distributed.main_only(progress),
    )


def _part_rows(split: Split, nonempty: np.ndarray) -> dict[str, np.ndarray]:
    rows = {}
    for name, part in zip(PARTS, (split.train, split.validation, split.test)):
        rows[name] = part[nonempty[part]]
        if rows[name].size == 0:
            raise ValueError(f"the {name} part of the split has no sentence with a non-empty bag")
    return rows


def _groups(
    config: ProbeConfig,
    probe: str,
    src: ProbeSource,
    num_rows: int,
    width: int,
    alphabet_size: int,
    device: torch.device,
) -> list[list[int]]:
    """The layers in groups that fit ``config.max_memory`` (default: half the free memory)."""
    budget = config.max_memory if config.max_memory is not None else default_max_memory(device)
    # The planner sizes groups with this same memory model (fastmi.probe.memory), so a plan is what runs.
    group_size = layers_per_group(
        budget,
        len(src.layers),
        num_rows,
        width,
        alphabet_size,
        config.train.batch_size,
        precision=resolve_precision(config.train.precision, device),
        train_softmax=config.train_softmax,
        probe=probe,
    )
    return layer_groups(src.layers, group_size)


def probe_group(run: ProbeRun, group: Sequence[int]) -> None:
    """Fit, score and bound one group of layers, and save it in the run's store."""
    config, src = run.config, run.source
    z, fit = group_features(run, group)
    index, bags, size = run.index, run.bags, run.alphabet.size
    fits, seeds, points = [], config.probe_seeds, []
    for j in range(seeds):  # probe_seeds > 1: probes differing in training order, all on one split
        fitted = fit(
            z[:, index["train"]],
            bags["train"],
            z[:, index["validation"]],
            bags["validation"],
            size,
            config.train,
            seed=config.seed + j,
            progress=run.progress,
            **({"init_seed": config.seed + j} if j else {}),
            description=f"{src.model} layers {group[0]}-{group[-1]}"
            + (f", probe {j + 1}/{seeds}" if seeds > 1 else ""),
        )
        z_test = fitted.features(z[:, index["test"]])
        fits.append((fitted, score_probes(z_test, fitted.weight, fitted.bias, bags["test"], size, config.k)))
        if j == 0:
            if config.curve:  # the curves refit the first seed's probe only; under "auto" each point
                # chooses its own form on validation: with fewer sentences the other form can be the better
                points = fit_curve_points(
                    z, index, bags, size, group, src.model, run.entropy, config, run.progress, fit=fit, probe=run.probe
                )
            if fitted.form:  # "auto" chose each layer's form on the first fit: the other seeds train that form
                fit = functools.partial(fit, forms=fitted.form)
    fitted, scores, per_seed = fits[0][0], seed_mean(fits), seed_statistics_of(fits)
    del z
    held = HeldOut(rows=run.rows["test"].astype(np.int64))
    rows, training = [], {}
    for i, layer in enumerate(group):
        converged = all(bool(f.converged[i]) for f, _ in fits)
        form = fitted.form[i] if fitted.form else run.probe
        rows.append(_layer_row(run, layer, form, converged, scores, i, per_seed[i] if seeds > 1 else None))
        errors, errors_k, ce_bits = (scores.errors[i].numpy(), scores.errors_k[i].numpy(), scores.ce_bits[i].numpy())
        held.add(layer, errors=errors, errors_k=errors_k, ce_bits=ce_bits)
        if seeds > 1:
            held.seeds[layer] = per_seed[i]
        training[str(layer)] = {
            "best_epoch": fitted.best_epoch[i],
            "validation_ce_bits": float(fitted.validation_ce_nats[i] / np.log(2)),
            "epochs_run": fitted.epochs_run,
            "start": fitted.start[i],
        }
        if fitted.other_bias:
            training[str(layer)]["other_bias"] = fitted.other_bias[i]
        if fitted.form_ce_nats:  # "auto": what each form reached on validation, and which was kept
            ce = {name: float(nats / np.log(2)) for name, nats in fitted.form_ce_nats[i].items()}
            training[str(layer)].update(form=form, form_validation_ce_bits=ce)
        if seeds > 1:
            training[str(layer)]["seeds"] = [seed_log(f, i, config.seed + j) for j, (f, _) in enumerate(fits)]
    # Per-sentence scores and curve points travel with the group, so a resumed or multi-process
    # run keeps what compare() and the curves need.
    saved = held.to_dict()
    extra = {"held_out": saved["layers"], "curve_points": points, "seeds": saved.get("seeds", {})}
    run.store.save(group, rows, training, extra=extra)


def _layer_row(run: ProbeRun, layer: int, form: str, converged: bool, scores: Any, i: int, per_seed=None) -> dict:
    """One layer's row of the result table: what was probed, how (``form``: the probe form trained
    at this layer), and its bounds."""
    config, src = run.config, run.source
    row = {
        "model": src.model,
        "revision": src.revision,
        "layer": layer,
        "rel_depth": layer / src.num_layers,
        "pooling": src.pooling,
        "vocab": config.vocab,
        "M": run.alphabet.size,
        "n_train": int(run.rows["train"].size),
        "n_test": int(run.rows["test"].size),
        "n_skipped": run.skipped,
        "bag_recall": float(scores.bag_recall[i].mean()),
        "probe": form,
        "train_softmax": config.train_softmax,
        "converged": converged,
    }
    row.update(
        bounds.layer_bounds(
            scores.errors[i].numpy(),
            scores.errors_k[i].numpy(),
            scores.ce_bits[i].numpy(),
            run.entropy.point,
            run.alphabet.size,
            config.k,
            level=config.level,
            seed=config.seed,
            n_bootstrap=config.n_bootstrap,
            seed_statistics=per_seed,
            entropy=run.entropy,
        )
    )
    return row


def assemble(run: ProbeRun):
    """Every group of every rank, once all are done, as one RecoverabilityResult."""
    from fastmi.results.result import RecoverabilityResult

    config, src = run.config, run.source
    rows, training, extras = run.store.collect(run.groups)
    held = HeldOut(rows=run.rows["test"].astype(np.int64), frequencies=run.frequencies).to_dict()
    held["seeds"] = {}
    for extra in extras:
        held["layers"].update(extra["held_out"])
        held["seeds"].update(extra.get("seeds", {}))
    points = [point for extra in extras for point in extra["curve_points"]]
    warn_unconverged(src.model, rows, config.train.max_epochs)
    warn_seed_spread(src.model, rows, config.train.patience)
    stored = result_config(run, training)
    curves = finish_curves(rows, points) if config.curve else []
    return RecoverabilityResult(rows, stored, {src.model: HeldOut.from_dict(held)}, curves)
