"""Sample-size curves: nested subsets, the data_limited rule, and a channel whose information is
known, where the bound rises with n_train and the flag turns off once n_train is large."""

from __future__ import annotations

import math

import pytest
import torch

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.probe.curves import check_curve, is_data_limited, nested_subsets
from fastmi.probe.training import TrainConfig
from fastmi.results.result import RecoverabilityResult

Q, EPS = 8, 0.2
TRUE_MI = math.log2(Q) + EPS * math.log2(EPS) + (1 - EPS) * math.log2(1 - EPS) - EPS * math.log2(Q - 1)


def symmetric_channel(n: int, seed: int):
    """T uniform on Q symbols; z = one-hot of T, replaced by another symbol with probability EPS."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(Q, (n,), generator=g)
    flip = torch.rand(n, generator=g) < EPS
    noisy = torch.where(flip, (t + torch.randint(1, Q, (n,), generator=g)) % Q, t)
    bags = BagTargets(torch.arange(n + 1), t, torch.ones(n, dtype=torch.long))
    return torch.nn.functional.one_hot(noisy, Q).float(), bags


def curve_of(n: int, test_fraction: float, seed: int = 0):
    z, bags = symmetric_channel(n, seed)
    return fastmi.recoverability(
        {0: z},
        targets=bags,
        vocab_size=Q,
        k=2,
        test_fraction=test_fraction,
        n_bootstrap=300,
        progress=False,
        train=TrainConfig(max_epochs=25, patience=3, batch_size=256),
        curve=(0.125, 0.25, 0.5, 1.0),
    )


def test_check_curve_and_nested_subsets():
    assert check_curve([0.5, 0.25, 0.5]) == (0.25, 0.5, 1.0)
    assert check_curve(None) is None
    for bad in ([0.0, 1.0], [1.5], [1.0], "ab"):
        with pytest.raises(ValueError):
            check_curve(bad)
    small, large = nested_subsets(100, (0.25, 0.5, 1.0), seed=3)
    assert small.size == 25 and large.size == 50 and set(small) <= set(large)
    with pytest.raises(ValueError, match="leaves none"):
        nested_subsets(3, (0.1, 1.0), seed=0)


def test_data_limited_rule():
    def point(n, ce, half):
        return {"n_train": n, "ce_bits": ce, "ce_bits_ucb": ce + half}

    assert is_data_limited([point(100, 3.0, 0.1), point(200, 2.8, 0.1)])  # rose 0.2 > 0.1
    assert not is_data_limited([point(200, 2.95, 0.1), point(100, 3.0, 0.1)])  # rose 0.05 (order does not matter)
    with pytest.raises(ValueError):
        is_data_limited([point(100, 3.0, 0.1)])


def test_bound_rises_with_n_train_and_the_flag_turns_off_once_n_train_is_large(tmp_path):
    # Few training rows (most held out, so the band is narrow): the probe is still learning.
    few = curve_of(3000, test_fraction=0.9)
    points = sorted(few.curves, key=lambda p: p["n_train"])
    assert [p["n_train"] for p in points] == [34, 68, 135, 270]
    values = [p["variational_bits"] for p in points]
    assert all(b >= a - 0.01 for a, b in zip(values, values[1:])) and values[-1] > values[0] + 0.2
    assert few.table[0]["data_limited"] is True
    # Many: the curve has flattened at the channel's information.
    many = curve_of(30000, test_fraction=0.1)
    points = sorted(many.curves, key=lambda p: p["n_train"])
    assert many.table[0]["data_limited"] is False
    assert (
        points[-1]["variational_bits"] - points[-2]["variational_bits"]
        < points[-1]["variational_bits"] - points[-1]["variational_lcb"]
    )
    assert abs(points[-1]["variational_bits"] - TRUE_MI) < 0.05
    for result in (few, many):
        for p in result.curves:
            assert p["variational_lcb"] <= TRUE_MI + 1e-9
    # The curves, the flag and the curve panel travel through JSON, CSV and the plot.
    back = RecoverabilityResult.from_json(many.to_json(tmp_path / "r.json"))
    assert back.curves == many.curves and back.table[0]["data_limited"] is False
    assert RecoverabilityResult.from_csv(many.to_csv(tmp_path / "r.csv")).table[0]["data_limited"] is False
    assert "data_limited" in many.format_table()
    from fastmi.results.plot import bounds_figure

    assert len(bounds_figure(many).axes) == 4  # three bounds + the curves
    assert len(bounds_figure(RecoverabilityResult(many.table, many.config)).axes) == 3


def test_bad_curve_fails_before_any_work(tmp_path, capsys):
    from fastmi.cli import main

    assert main(["probe", "--cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--curve", "0,2"]) == 2
    assert "curve fractions must lie in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
