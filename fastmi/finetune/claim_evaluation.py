"""One run's evaluation for the third claim's test (docs/finetune.md): every outcome, per held-out item.

A run is a finished ``fastmi finetune --tune-fraction`` output.  Its evaluation scores it on the
held-out part of the claim's split (read back from the run, so every run of a plan is scored on the
same sentences), with probes fitted on the probe part only:

* **E1** at the tuned and the last layer: the held-out bound of the term's own quantity
  (:mod:`fastmi.finetune.objective_bound`), per sentence H(T) - CE in bits;
* **E2** at every layer: ``fastmi.sweep`` with its default settings, per sentence H(T) - CE in bits;
* **D1** at the tuned and the last layer (the demo corpus only): BBC topic, logistic probe on the
  sweep's frozen mean-pooled embeddings, per sentence 1 if classified right;
* **D2** at the tuned and the last layer (when its package is installed): movie-review polarity
  (:mod:`fastmi.finetune.review_polarity`), the same probe, on its own seeded probe/held-out split;
* **O**: the model's own held-out loss (causal LM, or masked LM on fixed seeded masks), per sentence
  nats per token, weighted by its tokens.

:func:`evaluate_run` returns the dict that :func:`fastmi.finetune.claim_table.claim_table` reads; each
outcome's intermediate work (caches, probes) lives under ``work`` and is reused when run again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["claim_run", "evaluate_run", "run_split"]


def claim_run(run: str | Path):
    """``(info, corpus, parts)`` of a finished ``fastmi finetune --tune-fraction`` run: its
    finetune.json, its corpus (checked to be the one it was tuned on) and its three-way split."""
    from fastmi.data.corpus import Corpus
    from fastmi.finetune.split import claim_split

    done = Path(run) / "finetune.json"
    if not done.is_file():
        raise ValueError(f"{run} is not a finished fastmi finetune run (no finetune.json)")
    info = json.loads(done.read_text())
    record = info.get("claim_split")
    if not record:
        raise ValueError(f"{run} was not tuned with --tune-fraction: the claim's test needs its three-way split")
    config = info["config"]
    corpus = Corpus.load(config["corpus"], max_sentences=config.get("max_sentences"))
    if corpus.fingerprint != record["corpus"]:
        raise ValueError(f"{run} was tuned on another corpus than {config['corpus']!r} gives now")
    parts = claim_split(record["num_rows"], record["seed"], record["tune_fraction"], record["probe_fraction"])
    return info, corpus, parts


def run_split(run: str | Path):
    """``(config, corpus, split, rows)`` of a finished run: the probe and held-out parts of its claim
    split as a corpus, a Split of it whose held-out rows are the held-out part, and each sentence's
    row in the run's corpus."""
    from fastmi.finetune.split import evaluation_split

    info, corpus, parts = claim_run(run)
    return info, *evaluation_split(corpus.sentences, parts)


def _entry(rows, values, weights=None) -> dict:
    entry = {"rows": np.asarray(rows, dtype=np.int64).tolist(), "values": np.asarray(values, dtype=float).tolist()}
    if weights is not None:
        entry["weights"] = np.asarray(weights, dtype=float).tolist()
    return entry


def evaluate_run(
    run: str | Path,
    work: str | Path,
    lam: float,
    seed: int,
    d2_max_sentences: int | None = None,
    probe_settings: dict | None = None,
    e2: bool = True,
) -> dict:
    """Every outcome of the module docstring for the finished run ``run`` (its lambda ``lam`` and
    training seed ``seed``), intermediate work under ``work``.  ``probe_settings``: ProbeConfig
    fields for E1's and E2's probes (tests shorten their training).  ``e2=False`` leaves out E2's
    probes, the costliest outcome, and extracts the sweep's embeddings alone (D1 reads them)."""
    import torch

    from fastmi.finetune.evaluation import lm_token_losses
    from fastmi.finetune.objective_bound import objective_bound, term_pooled_states
    from fastmi.finetune.run import load_trainable, training_source
    from fastmi.probe.config import ProbeConfig
    from fastmi.sweep import sweep

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    info, corpus, split, rows = run_split(run)
    max_length = int(info["max_length"])
    tuned = int(info["layers"][0])
    model, tokenizer, kind, _ = load_trainable(training_source(str(run)), seed=0)
    last = int(model.config.num_hidden_layers)
    outcomes: dict[str, dict] = {}

    features = term_pooled_states(model, tokenizer, corpus.tokenize(tokenizer, max_length), [tuned, last])
    e1 = objective_bound(features, split, checkpoint_dir=work / "e1_probes", **(probe_settings or {}))
    outcomes["E1"] = {str(layer): _entry(rows[e["rows"]], e["values"]) for layer, e in e1.items()}

    heldout = [corpus.sentences[i] for i in split.test]
    nll, count = lm_token_losses(model, tokenizer, heldout, kind, max_length=max_length)
    scored = count > 0
    outcomes["O"] = {"all": _entry(rows[split.test][scored], nll[scored] / count[scored], count[scored])}
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    # E2: the sweep reads OUT/split.json, so its probes learn on the probe part alone.
    sweep_dir = work / "sweep"
    sweep_dir.mkdir(exist_ok=True)
    split.save(sweep_dir / "split.json")
    if e2:
        settings = ProbeConfig(seed=split.seed, test_fraction=split.test_fraction, **(probe_settings or {}))
        result = sweep([str(run)], corpus, sweep_dir, settings=settings, max_length=max_length, progress=False)
        name = str(result.table[0]["model"])
        held = result.held_out[name]
        outcomes["E2"] = {
            str(int(r["layer"])): _entry(rows[held.rows], float(r["H_T"]) - held.layers[int(r["layer"])]["ce_bits"])
            for r in result.table
        }
    else:
        _sweep_embeddings(run, corpus, sweep_dir, max_length)

    d1 = _topic_outcome(run, sweep_dir, info, split, rows, [tuned, last])
    if d1 is not None:
        outcomes["D1"] = d1
    d2 = _polarity_outcome(run, work, max_length, [tuned, last], d2_max_sentences)
    if d2 is not None:
        outcomes["D2"] = d2
    return {
        "run": str(run),
        "lambda": float(lam),
        "seed": int(seed),
        "model": info["config"]["model"],
        "steps": info["config"]["steps"],
        "train_sentences": info["train_sentences"],
        "max_length": max_length,
        "tuned_layer": tuned,
        "last_layer": last,
        "outcomes": outcomes,
    }


def _sweep_embeddings(run, corpus, sweep_dir: Path, max_length: int) -> None:
    """The cache the sweep would extract (its defaults, its folder), without its probes: a later
    sweep there finds it complete and reuses it."""
    from fastmi.activations.extraction import extract
    from fastmi.models.loading import load_model
    from fastmi.sweep import model_slug

    model = load_model(str(run))
    extract(model, corpus, cache_dir=sweep_dir / "cache" / model_slug(str(run)), max_length=max_length, progress=False)


def _topic_outcome(run, sweep_dir: Path, info: dict, split, rows, layers) -> dict | None:
    """D1 on the sweep's embeddings (probe part -> held-out part); None off the demo corpus."""
    from fastmi.activations.cache import ActivationCache
    from fastmi.finetune.evaluation import demo_topics, topic_probe_correct
    from fastmi.sweep import model_slug

    if info["config"]["corpus"] != "demo":
        return None
    _, labels, _ = demo_topics(info["config"].get("max_sentences"))
    labels = labels[rows]
    cache = ActivationCache.open(sweep_dir / "cache" / model_slug(str(run)))
    fit_rows = np.union1d(split.train, split.validation)
    out = {}
    for layer in layers:
        embeddings = np.asarray(cache.embeddings(layer))
        correct = topic_probe_correct(embeddings, labels, fit_rows, split.test)
        out[str(layer)] = _entry(rows[split.test], correct)
    return out


def _polarity_outcome(run, work: Path, max_length: int, layers, max_sentences) -> dict | None:
    """D2 on mean-pooled embeddings of the review snippets; None without its package."""
    from fastmi.activations.extraction import extract
    from fastmi.data.corpus import Corpus
    from fastmi.finetune import review_polarity
    from fastmi.finetune.evaluation import topic_probe_correct

    try:
        sentences, labels, _ = review_polarity.review_polarity(max_sentences)
    except review_polarity.MissingTaskData as missing:
        from fastmi.runtime.notices import notice

        notice(f"D2 skipped: {missing}")
        return None
    probe, heldout = review_polarity.polarity_split(len(sentences))
    cache = extract(
        str(run),
        Corpus.from_sentences(sentences, name="review-polarity"),
        layers=list(layers),
        cache_dir=work / "d2_cache",
        max_length=max_length,
        progress=False,
    )
    out = {}
    for layer in layers:
        correct = topic_probe_correct(np.asarray(cache.embeddings(layer)), labels, probe, heldout)
        out[str(layer)] = _entry(heldout, correct)
    return out
