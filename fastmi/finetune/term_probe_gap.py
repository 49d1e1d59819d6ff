"""Does the recoverability term's own probe memorise the tuning bags?  Its gap, measured.

The term is the cross-entropy of a probe trained alongside the model.  If that probe (and the model
under it) learnt the tuning sentences' bags rather than what generalises, its cross-entropy on the
sentences it trained on would sit below its cross-entropy on sentences it never saw, and the running
bound logged in training would overstate what the layer keeps (the first test's symptom,
docs/finetune.md).  :func:`term_probe_gap` scores a finished run's saved term probe
(``OUT/recoverability``) on the model it was saved with, over tune sentences (the ones training
drew) and held-out ones of its claim split, each read as the term reads them
(:func:`fastmi.finetune.objective_bound.term_pooled_states`; the model sees the unmasked sentence,
where a masked-LM run's training saw 15% of it masked).  The gap is held-out CE minus tune CE, in bits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["term_probe_gap"]


def term_probe_gap(run: str | Path, max_sentences: int = 1000, seed: int = 0) -> dict:
    """Per tuned layer of the finished run ``run``: its term probe's mean cross-entropy (bits) on at
    most ``max_sentences`` tune sentences and as many held-out ones (a seeded sample of each part),
    the gap (held-out minus tune) with its standard error, and ``passes``, the sentences drawn per
    tune sentence (below 1, a share 1 - passes of the sampled tune sentences were never drawn and the
    gap is diluted by as much)."""
    from fastmi import kernels
    from fastmi.data.corpus import Corpus
    from fastmi.finetune.claim_evaluation import claim_run
    from fastmi.finetune.objective_bound import term_pooled_states
    from fastmi.finetune.run import load_trainable, training_source
    from fastmi.finetune.trainer import load_probe

    run = Path(run)
    info, corpus, parts = claim_run(run)
    config = info["config"]
    rng = np.random.default_rng(seed)
    model, tokenizer, _, _ = load_trainable(training_source(str(run)), seed=0)
    probe = load_probe(run / "recoverability")
    ce_bits: dict[str, dict[int, np.ndarray]] = {}
    for name, rows in (("tune", parts.tune), ("heldout", parts.heldout)):
        chosen = np.sort(rng.choice(rows, size=min(max_sentences, len(rows)), replace=False))
        sentences = Corpus.from_sentences([corpus.sentences[i] for i in chosen], name=name)
        features = term_pooled_states(
            model, tokenizer, sentences.tokenize(tokenizer, int(info["max_length"])), probe.layers
        )
        keep = features.bags.lengths > 0
        ce_bits[name] = {}
        for layer in probe.layers:
            head = probe.probes[str(layer)]
            with torch.no_grad():
                ce = kernels.bag_cross_entropy(
                    features.states[layer], head.weight.float(), head.bias.float(), features.bags, reduction="none"
                )
            ce_bits[name][layer] = (ce[keep] / math.log(2)).double().numpy()
    # runs finished before finetune.json recorded it: one process, no accumulation
    passes = info.get("passes", int(config["steps"]) * int(config["batch_size"]) / int(info["train_sentences"]))
    out = {
        "run": str(run),
        "lambda": float(config["lam"]),
        "steps": int(config["steps"]),
        "passes": passes,
        "layers": {},
    }
    for layer in probe.layers:
        tune, held = ce_bits["tune"][layer], ce_bits["heldout"][layer]
        out["layers"][str(layer)] = {
            "tune_ce_bits": float(tune.mean()),
            "heldout_ce_bits": float(held.mean()),
            "gap_bits": float(held.mean() - tune.mean()),
            "gap_se_bits": float(math.sqrt(tune.var(ddof=1) / len(tune) + held.var(ddof=1) / len(held))),
            "sentences": [len(tune), len(held)],
        }
    return out
