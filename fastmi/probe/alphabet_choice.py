"""``vocab="auto"``: the alphabet map f chosen on the validation sentences, before any held-out one is scored.

A coarser map can give a larger valid bound on I(T; z): H(f(T)) - CE bounds I(f(T); z) <= I(T; z),
and merging the ids a probe cannot learn from the training sentences into one "other" symbol stops it
paying for them (docs/theory.md §7, "min:C").  How coarse is best depends on the corpus, its
size and the model, so it is measured: the maps of :data:`fastmi.data.alphabet.COARSENINGS` are tried
finest first, each trial map built from the training sentences alone and its probe trained there on a
few layers, then scored by the bound the run would report, estimated on the validation sentences
(new to every trial map): H(f(T)) as the held-out estimator will read it, minus the probe's
cross-entropy (cross-entropies under different maps are not comparable; bounds are).  The search
coarsens while that bound grows and keeps the last map that improved it, for the whole run, so every
layer shares one f and one H(f(T)); the run then builds that map as its setting says.

Why H(f(T)) is projected, not read off the validation bags: they are few (10% of the rest), and an
entropy estimate over few sentences is biased low, a fine map's by far more than a coarse one's, which
would push the search toward coarse maps for a reason that is not the probe's.  The held-out estimate
reads n_test sentences, so the search projects the estimator to that size from its values on all the
validation sentences and on halves of them (:func:`projected_entropy_bits`).

The held-out sentences play no part: the trial fits read the training and validation rows only, and
the choice is made before the run's own fit, whose held-out scores are the result.  The bound stays
valid for the same reason a probe's early stopping on validation keeps it valid (docs/theory.md §3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastmi.data.alphabet import COARSENINGS, Alphabet
from fastmi.probe.group_fit import group_features
from fastmi.probe.source import ProbeSource
from fastmi.probe.training import mean_ce
from fastmi.runtime.files import atomic_write_text, content_hash
from fastmi.stats.bounds import token_entropy_bits

__all__ = ["TRIAL_LAYERS", "choose_vocab", "projected_entropy_bits", "resolve_auto_vocab", "trial_layers"]

# Random halves behind each projected entropy: their mean's spread is far below the gaps between maps.
HALVES = 16
# Layers whose validation bounds decide the map: the first, the middle and the last probed, so that the
# choice sees shallow and deep representations at a fraction of a full run's cost.
TRIAL_LAYERS = 3


def trial_layers(layers: Sequence[int], count: int = TRIAL_LAYERS) -> list[int]:
    """``count`` layers spread evenly over ``layers`` (every one when there are fewer)."""
    layers = sorted(layers)
    if len(layers) <= count:
        return layers
    positions = np.linspace(0, len(layers) - 1, count).round().astype(int)
    return [layers[i] for i in sorted(set(positions.tolist()))]


def resolve_auto_vocab(
    source: Any, config: Any, checkpoint_dir: str | os.PathLike | None, **data: Any
) -> tuple[str, dict]:
    """:func:`choose_vocab`, kept beside an ActivationCache's probe groups (``checkpoint_dir``, default
    ``<cache>/probes``) so that a resumed run reads its choice instead of repeating the trials."""
    path = _saved_choice(source, config, checkpoint_dir, data)
    if path is not None and path.is_file():
        choice = json.loads(path.read_text())
        return choice["chosen"], choice
    chosen, choice = choose_vocab(source, config, **data)
    if path is not None:
        with contextlib.suppress(OSError):  # a read-only cache: the run goes on, a rerun chooses again
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(choice, indent=1) + "\n")
    return chosen, choice


def _saved_choice(source: Any, config: Any, checkpoint_dir, data: dict) -> Path | None:
    from fastmi.activations.cache import ActivationCache

    if not isinstance(source, ActivationCache):
        return None
    split = data.get("split")
    key = {
        "cache": source.identity,
        "settings": config.key(),
        "split": None if split is None else split.to_dict(),
        **{name: data.get(name) for name in ("layers", "model", "excluded_ids")},
    }
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else Path(source.directory) / "probes"
    return directory / f"vocab-choice-{content_hash(key, default=str)[:16]}.json"


def choose_vocab(source: Any, config: Any, *, layers: Sequence[int] | None = None, **data: Any) -> tuple[str, dict]:
    """(the chosen map, the record of every trial): the coarsest map of :data:`COARSENINGS` reached while
    the mean validation bound over :func:`trial_layers` kept rising.  ``data``: the keywords
    :func:`fastmi.probe.recoverability.prepare` takes (targets, split, model, ...)."""
    from fastmi.probe.recoverability import prepare

    src = ProbeSource.of(
        source,
        data.get("targets"),
        data.get("vocab_size"),
        model=data.get("model"),
        excluded_ids=data.get("excluded_ids", ()),
        layers=layers,
    )
    chosen_layers = trial_layers(src.layers)
    # One seed, no curve: a trial needs the probe's validation cross-entropy and nothing else.
    trial_config = dataclasses.replace(config, curve=None, probe_seeds=1)
    trials: dict[str, dict] = {}
    best, best_bound, previous_ids = None, -math.inf, None
    started = time.process_time()
    for setting in COARSENINGS:
        try:
            run = prepare(
                source,
                dataclasses.replace(trial_config, vocab=setting),
                layers=chosen_layers,
                trial=True,
                **data,
            )
        except ValueError as error:
            if best is None:  # the finest map failed: a problem of the data, not of coarseness
                raise
            trials[setting] = {"skipped": str(error)}  # a map that keeps no id ends the search
            break
        if previous_ids is not None and _same_map(run.alphabet, previous_ids):
            continue  # merges nothing more than the finer map did: no new trial
        previous_ids = run.alphabet.vocab_ids
        entropy, bounds = validation_bounds(run)
        mean_bound = float(np.mean(list(bounds.values())))
        trials[setting] = {
            "M": run.alphabet.size,
            "projected_entropy_bits": entropy,
            "validation_bound_bits": {str(layer): bound for layer, bound in bounds.items()},
        }
        if mean_bound <= best_bound:
            break
        best, best_bound = setting, mean_bound
    cpu = round(time.process_time() - started, 1)  # what the search added to the run, this process
    return best, {"chosen": best, "layers": chosen_layers, "trials": trials, "cpu_seconds": cpu}


def _same_map(alphabet: Alphabet, previous_ids: Any) -> bool:
    return alphabet.vocab_ids.shape == previous_ids.shape and bool((alphabet.vocab_ids == previous_ids).all())


def projected_entropy_bits(bags: Any, sample_rows: int, method: str, seed: int, halves: int = HALVES) -> float:
    """H(f(T))'s estimator ``method`` as it would read ``sample_rows`` sentences drawn like ``bags``
    (BagTargets of non-empty rows).  Its bias shrinks about as 1/n: from Ĥ(n) on all n rows and the
    mean Ĥ(n/2) over random halves, Ĥ(m) ~ Ĥ(n) + (Ĥ(n) - Ĥ(n/2)) (1 - n/m)."""
    bags = bags.to("cpu")
    rows = bags.num_rows
    whole = token_entropy_bits(bags, method)
    if rows < 2:
        return whole
    rng = np.random.default_rng(seed)
    half = np.mean(
        [token_entropy_bits(bags.select(rng.choice(rows, rows // 2, replace=False)), method) for _ in range(halves)]
    )
    return whole + (whole - float(half)) * (1 - rows / sample_rows)


def validation_bounds(run: Any) -> tuple[float, dict[int, float]]:
    """(H(f(T)) projected to the held-out estimate, and per layer that minus its probe's validation
    cross-entropy), in bits; the probe fitted on the training rows exactly as the run's own fit is.

    Under "observed", "other" has its bias calibrated on these same validation sentences, which makes
    that map's validation bound slightly optimistic: the search leans toward the finest map."""
    config = run.config
    entropy = projected_entropy_bits(run.bags["validation"], int(run.rows["test"].size), config.entropy, config.seed)
    index, bags, train = run.index, run.bags, run.config.train
    bounds = {}
    for group in run.groups:
        z, fit = group_features(run, group)
        fitted = fit(
            z[:, index["train"]],
            bags["train"],
            z[:, index["validation"]],
            bags["validation"],
            run.alphabet.size,
            train,
            seed=run.config.seed,
            progress=run.progress,
            description=f"{run.source.model} vocab {run.alphabet.setting}: layers {group[0]}-{group[-1]}",
        )
        z_val = fitted.features(z[:, index["validation"]])
        nats = mean_ce(z_val, fitted.weight, fitted.bias, bags["validation"], max(train.batch_size, 1))
        for layer, ce in zip(group, nats.tolist()):
            bounds[layer] = entropy - ce / math.log(2)
    return entropy, bounds
