"""vocab="min:C" and vocab="auto": the count-threshold alphabet, and the coarseness chosen on validation.

The data: a token is one of 8 frequent ids or one of 2,000 rare ones, which the features cannot tell
apart (they show the frequent id, or only "rare").  I(T; z) is then at most H(class), the entropy of
{8 frequent ids, rare}, and a probe on the observed alphabet pays for rare ids it cannot learn: a
coarser map should be chosen and give a larger bound that still stays below H(class).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastmi
from fastmi.data.alphabet import COARSENINGS, Alphabet, parse_vocab
from fastmi.data.bags import BagTargets
from fastmi.data.split import Split
from fastmi.planning.planner import vocab_trials_share
from fastmi.probe.alphabet_choice import choose_vocab, projected_entropy_bits, trial_layers
from fastmi.probe.config import ProbeConfig
from fastmi.probe.training import TrainConfig
from fastmi.stats.bounds import token_entropy_bits

FREQUENT, RARE, ROWS, RARE_SHARE = 8, 2000, 3000, 0.5
VOCAB = FREQUENT + RARE
FAST = TrainConfig(max_epochs=6, patience=2, batch_size=256)


def class_entropy_bits() -> float:
    """H(class): the frequent ids equally likely, all rare ids together one class."""
    frequent = (1 - RARE_SHARE) / FREQUENT
    return -(FREQUENT * frequent * math.log2(frequent) + RARE_SHARE * math.log2(RARE_SHARE))


def rare_token_data(seed: int = 0, layers: int = 1):
    g = torch.Generator().manual_seed(seed)
    rare = torch.rand(ROWS, generator=g) < RARE_SHARE
    tokens = torch.where(
        rare, FREQUENT + torch.randint(RARE, (ROWS,), generator=g), torch.randint(FREQUENT, (ROWS,), generator=g)
    )
    shown = torch.where(rare, torch.full_like(tokens, FREQUENT), tokens)  # the class, never the rare id
    features = {
        layer: torch.nn.functional.one_hot(shown, FREQUENT + 1).float()
        + (0.1 + 0.3 * layer) * torch.randn(ROWS, FREQUENT + 1, generator=g)
        for layer in range(layers)
    }
    bags = BagTargets(torch.arange(ROWS + 1), tokens, torch.ones(ROWS, dtype=torch.long))
    return features, bags


def test_min_count_keeps_the_ids_seen_at_least_c_times_in_training_and_validation():
    train = BagTargets.from_token_lists([[1, 1, 2], [3, 4], [4]], vocab_size=10)
    validation = BagTargets.from_token_lists([[2, 5], [6]], vocab_size=10)
    alphabet = Alphabet.build("min:2", train, 10, excluded_ids=[0], validation=validation)
    assert alphabet.vocab_ids.tolist() == [1, 2, 4] and alphabet.other and alphabet.size == 4
    compact = alphabet.compact(BagTargets.from_token_lists([[1, 3, 9], [4]], vocab_size=10))
    assert compact.ids.tolist() == [0, 3, 2]  # 3 (seen once) and 9 (never seen) are "other"
    with pytest.raises(ValueError, match="no id occurs 9 times"):
        Alphabet.build("min:9", train, 10, validation=validation)
    for bad in ("min:1", "min:x", "min:"):
        with pytest.raises(ValueError, match="min:C"):
            parse_vocab(bad)


def test_trial_layers_spread_over_the_probed_layers():
    assert trial_layers([0, 1]) == [0, 1]
    assert trial_layers(list(range(13))) == [0, 6, 12]
    assert trial_layers([8, 2, 6, 4]) == [2, 6, 8]  # positions 0, 1.5 -> 2, 3 of the sorted layers


def test_auto_coarsens_past_unlearnable_rare_ids_and_stays_below_the_true_mi():
    features, bags = rare_token_data()
    common = dict(targets=bags, vocab_size=VOCAB, k=2, seed=0, n_bootstrap=300, train=FAST, progress=False)
    observed = fastmi.recoverability(features, vocab="observed", **common)
    auto = fastmi.recoverability(features, vocab="auto", **common)
    row, choice = auto.table[0], auto.config["vocab_choice"]
    assert choice["chosen"] == row["vocab"] == auto.config["vocab"] != "observed"
    assert row["vocab"] in COARSENINGS and row["M"] < observed.table[0]["M"]
    assert list(choice["trials"]) == [s for s in COARSENINGS if s in choice["trials"]]  # finest first
    # The chosen map's validation bound is the best of those tried.
    means = {s: np.mean(list(t["validation_bound_bits"].values())) for s, t in choice["trials"].items() if "M" in t}
    assert max(means, key=means.get) == choice["chosen"]
    # I(T; z) <= H(class): no lower confidence bound may pass it, and the coarser map gains.
    for bound in ("fano", "list_fano", "variational"):
        assert row[f"{bound}_lcb"] <= class_entropy_bits(), bound
    assert row["variational_bits"] > observed.table[0]["variational_bits"] + 0.2
    assert row["H_T"] < observed.table[0]["H_T"]  # H(f(T)) of the chosen map, reported in the row


def test_the_choice_never_reads_the_held_out_rows():
    features, bags = rare_token_data(layers=2)
    split = Split.make(ROWS, 0.2, seed=5)
    config = ProbeConfig(train=FAST, n_bootstrap=100, vocab="auto")
    data = dict(targets=bags, vocab_size=VOCAB, split=split, progress=False)
    chosen, record = choose_vocab(features, config, **data)
    # Poison every held-out row: features of another scale, tokens from elsewhere in the vocabulary.
    g = torch.Generator().manual_seed(9)
    test = torch.as_tensor(split.test)
    poisoned = {layer: z.clone() for layer, z in features.items()}
    for z in poisoned.values():
        z[test] = 50 * torch.randn(test.numel(), z.shape[1], generator=g)
    tokens = bags.ids.clone()
    tokens[test] = torch.randint(VOCAB, (test.numel(),), generator=g)
    poisoned_bags = BagTargets(bags.offsets, tokens, bags.counts)
    again, again_record = choose_vocab(poisoned, config, **{**data, "targets": poisoned_bags})
    assert again_record.pop("cpu_seconds") >= 0 and record.pop("cpu_seconds") >= 0
    assert (again, again_record) == (chosen, record)


def test_the_planner_prices_the_trials_of_auto():
    assert vocab_trials_share("observed", 30) == (0.0, 0.0)
    low, high = vocab_trials_share("auto", 30)
    assert low == pytest.approx(2 * 3 / 30) and high == pytest.approx(len(COARSENINGS) * 3 / 30)
    assert vocab_trials_share("auto", 2) == (2.0, float(len(COARSENINGS)))


def zipf_sentences(rows: int, g: torch.Generator) -> BagTargets:
    ranks = torch.arange(1, 301, dtype=torch.float64)
    lengths = torch.randint(3, 12, (rows,), generator=g).tolist()
    return BagTargets.from_token_lists(
        [torch.multinomial(1 / ranks, n, replacement=True, generator=g).tolist() for n in lengths], vocab_size=300
    )


def test_the_projected_entropy_is_what_the_estimator_reads_on_more_sentences():
    g = torch.Generator().manual_seed(0)
    validation = zipf_sentences(100, g)
    assert projected_entropy_bits(validation, 100, "plugin", 0) == pytest.approx(token_entropy_bits(validation))
    # What the held-out plug-in reads on 400 sentences of the same source, on average.
    target = np.mean([token_entropy_bits(zipf_sentences(400, g)) for _ in range(20)])
    projected = projected_entropy_bits(validation, 400, "plugin", 0)
    raw = token_entropy_bits(validation)
    assert raw < projected and abs(projected - target) < 0.5 * abs(raw - target)
