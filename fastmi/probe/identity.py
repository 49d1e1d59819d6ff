"""What identifies a probe run: the settings its saved layer groups are filed under
(:class:`fastmi.probe.groups.GroupStore`) and the ``config`` its result records.

Both hold the alphabet rule (:func:`fastmi.data.alphabet.alphabet_rule`): groups and results made
when the alphabet was built from every sentence, held-out ones included, are not reused.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastmi.data.alphabet import alphabet_rule
from fastmi.stats.heldout_entropy import ESTIMATOR

__all__ = ["open_store", "result_config"]


def open_store(source: Any, src: Any, config: Any, alphabet_size: int, split: Any, checkpoint_dir):
    from fastmi.probe.groups import GroupStore

    # Everything that changes the numbers of a group (the groups themselves are matched layer by layer).
    settings = dict(
        model=src.model,
        vocab=config.vocab,
        alphabet_size=alphabet_size,
        k=config.k,
        level=config.level,
        seed=config.seed,
        entropy=config.entropy,
        entropy_on="held-out resamples",
        n_bootstrap=config.n_bootstrap,
        train=asdict(config.train),
        split=split.to_dict(),
        excluded_ids=list(src.excluded_ids),
        probe=config.probe,
        train_softmax=config.train_softmax,
        curve=list(config.curve or ()),
        probe_seeds=config.probe_seeds,
        **alphabet_rule(config.vocab),
    )
    return GroupStore.open(source, src.layers, checkpoint_dir=checkpoint_dir, settings=settings)


def result_config(run: Any, training: dict) -> dict:
    """The result's ``config``: the settings, the data and each layer's training log."""
    config, src = run.config, run.source
    stored = {
        "model": src.model,
        "revision": src.revision,
        "pooling": src.pooling,
        "vocab": config.vocab,
        **alphabet_rule(config.vocab),
        "alphabet_size": run.alphabet.size,
        "vocab_size": src.vocab_size,
        "k": config.k,
        "level": config.level,
        "seed": config.seed,
        "entropy_method": config.entropy,
        "entropy_estimator": ESTIMATOR.format(method=config.entropy),
        "n_bootstrap": config.n_bootstrap,
        "probe_seeds": config.probe_seeds,
        "layers": list(src.layers),
        "layer_groups": [list(g) for g in run.groups],
        "device": str(run.device),
        "train": asdict(config.train),
        "probe": config.probe,
        "probe_trained": run.probe,
        "train_softmax": config.train_softmax,
        "unembedding_source": run.head_source,
        "training": training,
        "split": run.split.to_dict(),
        "source": {key: value for key, value in src.metadata.items() if _is_json_scalar(value)},
    }
    if config.curve:
        stored["curve"] = list(config.curve)
    if run.vocab_choice is not None:  # vocab="auto": "vocab" above is the map it chose
        stored["vocab_choice"] = run.vocab_choice
    return stored


def _is_json_scalar(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, (str, int, float, bool))
        or (isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value))
    )
