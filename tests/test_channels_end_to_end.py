"""Synthetic channels whose mutual information is known in closed form, through fastmi.recoverability
with raw inputs: every reported bound must lie below the true MI (within its confidence), and the
tight ones close to it."""

from __future__ import annotations

import math

import pytest
import torch

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.probe.training import TrainConfig

SAMPLES = 20_000
BOUND_COLUMNS = ("fano", "list_fano", "variational")


def single_token_bags(tokens: torch.Tensor) -> BagTargets:
    n = tokens.numel()
    return BagTargets(torch.arange(n + 1), tokens, torch.ones(n, dtype=torch.long))


def binary_entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def run(z: torch.Tensor, tokens: torch.Tensor, q: int):
    return fastmi.recoverability(
        {0: z},
        targets=single_token_bags(tokens),
        vocab_size=q,
        k=2,
        seed=0,
        n_bootstrap=500,
        train=TrainConfig(max_epochs=8, patience=2, batch_size=512),
        progress=False,
    ).table[0]


@pytest.mark.parametrize("q, eps", [(8, 0.2), (4, 0.1)])
def test_q_ary_symmetric_channel(q, eps):
    g = torch.Generator().manual_seed(q)
    t = torch.randint(q, (SAMPLES,), generator=g)
    flip = torch.rand(SAMPLES, generator=g) < eps
    noisy = torch.where(flip, (t + torch.randint(1, q, (SAMPLES,), generator=g)) % q, t)
    row = run(torch.nn.functional.one_hot(noisy, q).float(), t, q)
    true_mi = math.log2(q) - binary_entropy(eps) - eps * math.log2(q - 1)

    assert row["M"] == q and row["H_T"] == pytest.approx(math.log2(q), abs=0.01)
    for bound in BOUND_COLUMNS:
        assert row[f"{bound}_lcb"] <= true_mi, bound
        assert row[f"{bound}_lcb"] <= row[f"{bound}_bits"]
    # Fano is tight here (the Bayes decoder errs with probability eps, uniformly over the other
    # symbols) and the Bayes posterior is linear-softmax in the one-hot z, so the variational
    # bound is tight too.
    for bound in ("fano", "variational"):
        assert abs(row[f"{bound}_bits"] - true_mi) < 0.1, bound
        assert abs(row[f"{bound}_lcb"] - true_mi) < 0.1, bound
    assert row["p_error"] == pytest.approx(eps, abs=0.02)


def test_independent_channel_gives_zero():
    q = 8
    g = torch.Generator().manual_seed(1)
    t = torch.randint(q, (SAMPLES,), generator=g)
    z = torch.randn(SAMPLES, 16, generator=g)  # independent of t
    row = run(z, t, q)
    for bound in BOUND_COLUMNS:
        # The true MI is 0: a lower confidence value above 0 would be a false claim.
        assert row[f"{bound}_lcb"] == 0.0, bound
        assert row[f"{bound}_bits"] <= 0.02, bound
