"""The three-way split of the third claim's test (docs/finetune.md): tuning, evaluation probes, held out.

:func:`claim_split` cuts a corpus's rows into three disjoint parts, reproducible from a seed:

* *tune*: the only sentences ``fastmi finetune --tune-fraction`` trains on;
* *probe*: the sentences the evaluation probes (recoverability and downstream) are fitted on;
* *held out*: the sentences every figure is scored on.

The evaluation probes never see a tuning sentence: :func:`evaluation_split` gives the corpus of the
probe and held-out parts alone, with a :class:`fastmi.data.split.Split` over it whose held-out rows are
the held-out part (a sweep of that corpus fits its probes on the probe part, and early-stops on a
seeded tenth of it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClaimSplit", "claim_split", "check_fractions", "evaluation_split"]


@dataclass(frozen=True)
class ClaimSplit:
    """Sorted int64 row indices of the three parts, and the settings that made them."""

    num_rows: int
    seed: int
    tune_fraction: float
    probe_fraction: float
    tune: np.ndarray
    probe: np.ndarray
    heldout: np.ndarray

    def to_dict(self) -> dict:
        return {
            "num_rows": self.num_rows,
            "seed": self.seed,
            "tune_fraction": self.tune_fraction,
            "probe_fraction": self.probe_fraction,
            "tune": self.tune.tolist(),
            "probe": self.probe.tolist(),
            "heldout": self.heldout.tolist(),
        }

    def __iter__(self):
        return iter((self.tune, self.probe, self.heldout))


def check_fractions(tune_fraction: float, probe_fraction: float) -> None:
    """Both in (0, 1), and their sum below 1 (the rest is held out)."""
    for name, value in (("tune_fraction", tune_fraction), ("probe_fraction", probe_fraction)):
        if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
            raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    if tune_fraction + probe_fraction >= 1.0:
        raise ValueError(
            f"tune_fraction + probe_fraction must be < 1 (the rest is held out), got {tune_fraction} + {probe_fraction}"
        )


def claim_split(num_rows: int, seed: int = 0, tune_fraction: float = 0.4, probe_fraction: float = 0.3) -> ClaimSplit:
    """Shuffle ``range(num_rows)`` with ``seed``: the first ``tune_fraction`` (rounded) is the tune part,
    the next ``probe_fraction`` the probe part, the rest held out.  Every part must be non-empty.
    Unpacks as ``tune, probe, heldout = claim_split(...)``."""
    if not isinstance(num_rows, int) or isinstance(num_rows, bool) or num_rows < 3:
        raise ValueError(f"num_rows must be an int >= 3, got {num_rows!r}")
    check_fractions(tune_fraction, probe_fraction)
    num_tune = int(round(tune_fraction * num_rows))
    num_probe = int(round(probe_fraction * num_rows))
    if min(num_tune, num_probe, num_rows - num_tune - num_probe) < 1:
        raise ValueError(f"{num_rows} rows leave an empty part with fractions {tune_fraction}, {probe_fraction}")
    order = np.random.default_rng(seed).permutation(num_rows)
    return ClaimSplit(
        num_rows=num_rows,
        seed=int(seed),
        tune_fraction=float(tune_fraction),
        probe_fraction=float(probe_fraction),
        tune=np.sort(order[:num_tune]).astype(np.int64),
        probe=np.sort(order[num_tune : num_tune + num_probe]).astype(np.int64),
        heldout=np.sort(order[num_tune + num_probe :]).astype(np.int64),
    )


def evaluation_split(sentences, parts: ClaimSplit, validation_fraction: float = 0.1):
    """``(corpus, split, rows)``: the probe and held-out sentences (in corpus order) as a
    :class:`fastmi.Corpus`, a :class:`fastmi.data.split.Split` of it whose held-out rows are exactly
    the held-out part (validation: a seeded ``validation_fraction`` of the probe part), and ``rows``, the
    original row of each of its sentences.  ``split.test_fraction`` is the held-out share of the corpus:
    pass it (and ``parts.seed``) as the sweep's settings, so that ``fastmi.sweep`` accepts the split."""
    from fastmi.data.corpus import Corpus
    from fastmi.data.split import Split

    sentences = list(sentences)
    if len(sentences) != parts.num_rows:
        raise ValueError(f"the split was made for {parts.num_rows} sentences, not {len(sentences)}")
    rows = np.union1d(parts.probe, parts.heldout)
    corpus = Corpus.from_sentences([sentences[i] for i in rows], name="probe+heldout")
    position = {int(row): i for i, row in enumerate(rows)}
    test = np.array([position[int(r)] for r in parts.heldout], dtype=np.int64)
    probe = np.array([position[int(r)] for r in parts.probe], dtype=np.int64)
    num_validation = max(1, int(round(validation_fraction * probe.size)))
    if num_validation >= probe.size:
        raise ValueError(f"a probe part of {probe.size} rows is too small to keep validation rows apart")
    validation = np.sort(np.random.default_rng(parts.seed).permutation(probe)[:num_validation]).astype(np.int64)
    split = Split(
        num_rows=len(rows),
        seed=parts.seed,
        test_fraction=float(test.size / len(rows)),
        validation_fraction=float(validation_fraction),
        test=np.sort(test),
        validation=validation,
        corpus_fingerprint=corpus.fingerprint,
    )
    return corpus, split, rows
