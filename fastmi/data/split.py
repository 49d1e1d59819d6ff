"""A fixed, seeded split of a corpus's sentences into train, validation and held-out (test).

Every layer of every model probed on one corpus is scored on the same held-out sentences, so the
split is made once from the corpus size and a seed, saved as JSON beside the results, and handed to
each model in turn.  Validation rows are carved out of the train part and used only for early
stopping; the held-out rows are used only for the final scores and bounds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastmi.runtime.files import atomic_write_text

__all__ = ["Split"]


@dataclass(frozen=True)
class Split:
    """Row indices (sorted, int64) of the held-out and validation sentences of a corpus."""

    num_rows: int
    seed: int
    test_fraction: float
    validation_fraction: float
    test: np.ndarray
    validation: np.ndarray
    corpus_fingerprint: str | None = None

    @classmethod
    def make(
        cls,
        num_rows: int,
        test_fraction: float = 0.2,
        seed: int = 0,
        validation_fraction: float = 0.1,
        corpus_fingerprint: str | None = None,
    ) -> Split:
        """Shuffle ``range(num_rows)`` with ``seed``; the first ``test_fraction`` is held out, then
        ``validation_fraction`` of the rest is kept for early stopping."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie strictly between 0 and 1, got {validation_fraction}")
        num_test = int(round(test_fraction * num_rows))
        if num_test == 0:
            raise ValueError(
                f"test_fraction={test_fraction} of {num_rows} sentences leaves no held-out sentences; "
                "raise it or use a larger corpus"
            )
        num_validation = max(1, int(round(validation_fraction * (num_rows - num_test))))
        if num_rows - num_test - num_validation < 1:
            raise ValueError(
                f"{num_rows} sentences leave no training sentences after holding out {num_test} "
                f"and validating on {num_validation}"
            )
        order = np.random.default_rng(seed).permutation(num_rows)
        return cls(
            num_rows=num_rows,
            seed=seed,
            test_fraction=float(test_fraction),
            validation_fraction=float(validation_fraction),
            test=np.sort(order[:num_test]).astype(np.int64),
            validation=np.sort(order[num_test : num_test + num_validation]).astype(np.int64),
            corpus_fingerprint=corpus_fingerprint,
        )

    @property
    def train(self) -> np.ndarray:
        """Rows the probe is fitted on: neither held out nor validation."""
        keep = np.ones(self.num_rows, dtype=bool)
        keep[self.test] = False
        keep[self.validation] = False
        return np.flatnonzero(keep).astype(np.int64)

    def check(self, num_rows: int, corpus_fingerprint: str | None = None) -> None:
        """Refuse to score a corpus this split was not made for."""
        if num_rows != self.num_rows:
            raise ValueError(f"the split was made for {self.num_rows} sentences but the data has {num_rows}")
        if corpus_fingerprint and self.corpus_fingerprint and corpus_fingerprint != self.corpus_fingerprint:
            raise ValueError(f"the split was made for corpus {self.corpus_fingerprint!r}, not {corpus_fingerprint!r}")

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "num_rows": self.num_rows,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "validation_fraction": self.validation_fraction,
            "corpus_fingerprint": self.corpus_fingerprint,
            "test": self.test.tolist(),
            "validation": self.validation.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        split = cls(
            num_rows=int(data["num_rows"]),
            seed=int(data["seed"]),
            test_fraction=float(data["test_fraction"]),
            validation_fraction=float(data["validation_fraction"]),
            test=np.asarray(data["test"], dtype=np.int64),
            validation=np.asarray(data["validation"], dtype=np.int64),
            corpus_fingerprint=data.get("corpus_fingerprint"),
        )
        for name, rows in (("test", split.test), ("validation", split.validation)):
            if rows.size and (rows.min() < 0 or rows.max() >= split.num_rows):
                raise ValueError(f"split {name} rows must lie in [0, {split.num_rows})")
        if np.intersect1d(split.test, split.validation).size:
            raise ValueError("split test and validation rows overlap")
        return split

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Split:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no split file at {path}")
        return cls.from_dict(json.loads(path.read_text()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.num_rows, self.seed, self.test.tobytes(), self.validation.tobytes()))
