"""Token bags: the numba counter against collections.Counter, and BagTargets validation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from fastmi.data.bags import BagTargets, count_bags


def reference_bags(token_lists, exclude=()):
    """Plain-Python bags: per row, sorted (id, count) pairs of the non-excluded ids."""
    exclude = set(exclude)
    return [sorted(Counter(t for t in row if t not in exclude).items()) for row in token_lists]


def as_pairs(bags: BagTargets):
    o, ids, c = bags.offsets.tolist(), bags.ids.tolist(), bags.counts.tolist()
    return [list(zip(ids[o[r] : o[r + 1]], c[o[r] : o[r + 1]])) for r in range(bags.num_rows)]


def random_token_lists(rng, rows, vocab, max_len):
    # repeats are frequent (vocab small against max_len) and some rows are empty
    return [rng.integers(0, vocab, size=int(rng.integers(0, max_len + 1))).tolist() for _ in range(rows)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_bags_matches_counter(seed):
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(5, 60))
    lists = random_token_lists(rng, rows=int(rng.integers(1, 80)), vocab=vocab, max_len=40)
    lists[0] = []  # an empty row up front
    exclude = sorted(set(rng.integers(0, vocab, size=3).tolist()))
    bags = BagTargets.from_token_lists(lists, exclude=exclude, vocab_size=vocab)
    assert as_pairs(bags) == reference_bags(lists, exclude)
    assert bags.offsets.dtype == bags.ids.dtype == bags.counts.dtype == torch.int64
    expected_len = [sum(1 for t in row if t not in exclude) for row in lists]
    assert bags.lengths.tolist() == expected_len
    assert bags.bag_sizes.tolist() == [len(b) for b in reference_bags(lists, exclude)]


def test_rows_made_only_of_excluded_ids_are_empty():
    bags = BagTargets.from_token_lists([[1, 1, 2], [2, 2], [], [3, 2, 1, 3]], exclude=[2])
    assert as_pairs(bags) == [[(1, 2)], [], [], [(1, 1), (3, 2)]]
    assert bags.lengths.tolist() == [2, 0, 0, 3]


def test_exclusions_beyond_the_observed_ids_are_fine():
    bags = BagTargets.from_token_lists([[0, 1, 1]], exclude=[50_000])
    assert as_pairs(bags) == [[(0, 1), (1, 2)]]


def test_count_bags_input_errors():
    with pytest.raises(ValueError, match="non-negative"):
        count_bags(np.array([0, -1]), np.array([0, 2]))
    with pytest.raises(ValueError, match="out of range for a vocabulary of size 5"):
        BagTargets.from_token_lists([[1, 5]], vocab_size=5)


def test_no_rows():
    bags = BagTargets.from_token_lists([])
    assert bags.num_rows == 0 and bags.ids.numel() == 0


def test_select_and_roundtrip():
    rng = np.random.default_rng(3)
    lists = random_token_lists(rng, rows=20, vocab=30, max_len=15)
    bags = BagTargets.from_token_lists(lists, exclude=[0])
    rows = [7, 0, 19, 7, 3]
    picked = bags.select(rows)
    assert as_pairs(picked) == [reference_bags(lists, [0])[r] for r in rows]
    back = BagTargets.from_dict(bags.to_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.to_dict().values(), bags.to_dict().values()))


@pytest.mark.parametrize(
    "offsets, ids, counts, error, message",
    [
        ([1, 2], [3], [1], ValueError, "start at 0"),
        ([], [], [], ValueError, "start at 0"),
        ([0, 2], [3], [1], ValueError, r"offsets\[-1\] = 2 but there are 1 ids"),
        ([0, 1], [3], [1, 1], ValueError, "1 ids but 2 counts"),
        ([0, 2, 1, 3], [1, 2, 3], [1, 1, 1], ValueError, "non-decreasing"),
        ([0, 1], [-2], [1], ValueError, "non-negative"),
        ([0, 2], [1, 2], [1, 0], ValueError, "positive"),
        ([0, 1], [1.0], [1], TypeError, "integer"),
        ([[0, 1]], [1], [1], ValueError, "1-D"),
    ],
)
def test_bagtargets_validation(offsets, ids, counts, error, message):
    def tensor(values):  # an empty list would become a float tensor
        return torch.tensor(values) if len(values) else torch.zeros(0, dtype=torch.long)

    with pytest.raises(error, match=message):
        BagTargets(tensor(offsets), tensor(ids), tensor(counts))


def test_check_vocab_names_the_row():
    bags = BagTargets(torch.tensor([0, 1, 3]), torch.tensor([2, 1, 9]), torch.tensor([1, 1, 2]))
    bags.check_vocab(10)
    with pytest.raises(ValueError, match=r"target id 9 \(row 1\) is out of range for an alphabet of size 9"):
        bags.check_vocab(9)


def test_bags_from_a_corpus_exclude_special_tokens(tmp_path):
    from tiny import make_tiny_model, random_sentences
    from transformers import AutoTokenizer

    from fastmi.data.corpus import Corpus

    tok = AutoTokenizer.from_pretrained(make_tiny_model("bert", tmp_path / "bert"))
    corpus = Corpus.from_sentences(random_sentences(30, seed=4))
    lists = corpus.tokenize(tok, max_length=12)
    bags = BagTargets.from_token_lists(lists, exclude=tok.all_special_ids, vocab_size=len(tok))
    assert as_pairs(bags) == reference_bags(lists, tok.all_special_ids)
    assert not set(bags.ids.tolist()) & set(tok.all_special_ids)
    assert bags.lengths.tolist() == [len(row) - 2 for row in lists]  # minus [CLS] and [SEP]


def test_counting_bags_leaves_torch_on_its_thread_count():
    """numba's first parallel call starts its OpenMP pool on every core and, through the runtime
    it shares with torch, used to set torch's thread count to that: a run asked for one thread
    (OMP_NUM_THREADS=1) then ran its matmuls on all cores.  A fresh process, as the first call
    is the one that did it.  numba itself is imported only by the call that needs it."""
    code = (
        "import sys, torch\n"
        "import fastmi.activations.extraction, fastmi.probe.recoverability\n"
        "from fastmi.data.bags import BagTargets\n"
        "from fastmi.kernels.masked_pool_cpu import masked_pool_torch\n"
        "assert 'numba' not in sys.modules\n"
        "import numba\n"
        "assert torch.get_num_threads() == 1\n"
        "assert BagTargets.from_token_lists([[1, 2, 2], [2]]).counts.tolist() == [1, 2, 1]\n"
        "assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)\n"
        "hidden, mask = torch.ones(2, 3, 4, dtype=torch.bfloat16), torch.ones(2, 3, dtype=torch.bool)\n"
        "pooled = masked_pool_torch(hidden, mask, 'mean')\n"
        "assert pooled.tolist() == [[1.0] * 4] * 2 and torch.get_num_threads() == 1\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS=str(max(2, os.cpu_count() or 2)))
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
