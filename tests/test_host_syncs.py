"""A probe training step costs at most two host syncs (each one a GPU pipeline stall).

Counted on CPU tensors: the ops that would sync a GPU (reading a value back with ``item`` /
``int`` / ``bool`` / ``tolist``, and the ops whose output size depends on the data: ``nonzero``,
``unique``, ``masked_select``, ``repeat_interleave`` without ``output_size``).
"""

from __future__ import annotations

import pytest
import torch
from test_bag_cross_entropy import make_bags
from torch.utils._python_dispatch import TorchDispatchMode

import fastmi
from fastmi.kernels import backend, bag_cross_entropy

DATA_SIZED = {
    "aten.nonzero.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.masked_select.default",
    "aten._local_scalar_dense.default",
}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in DATA_SIZED or (
            name.startswith("aten.repeat_interleave") and not (kwargs or {}).get("output_size") and len(args) < 4
        ):
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counter(monkeypatch):
    mode = SyncCounter()
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: mode.syncs.append("tolist") or tolist(t))
    return mode


@pytest.mark.parametrize("path", ["cpu", "triton"])
def test_training_step_costs_at_most_two_syncs(path, counter):
    targets = make_bags(40)
    z = torch.randn(3, 40, 37)
    weight = torch.zeros(3, 300, 37, requires_grad=True)
    bias = torch.zeros(3, 300, requires_grad=True)

    def step(rows):
        batch = targets.select(rows)  # as fastmi.probe.training.fit_probes does
        with backend(path):
            losses = bag_cross_entropy(z[:, rows], weight, bias, batch, reduction="mean")
        weight.grad = bias.grad = None
        losses.sum().backward()

    order = torch.randperm(40)
    step(order[:16])  # the first step reads the full bag set's id bounds once
    counter.syncs.clear()
    with counter:
        step(order[16:32])
    assert len(counter.syncs) <= 2, counter.syncs
    assert weight.grad is not None and bool(weight.grad.abs().sum() > 0)


def test_select_inherits_bounds_and_still_catches_bad_ids():
    targets = fastmi.BagTargets(torch.tensor([0, 2, 3]), torch.tensor([1, 9, 4]), torch.tensor([1, 1, 2]))
    assert targets.id_bounds() == (1, 9)
    subset = targets.select(torch.tensor([1]))
    assert subset.ids.tolist() == [4] and subset.id_bounds() == (1, 9)  # loose but containing
    z, weight = torch.randn(1, 3), torch.randn(5, 3)  # V = 5: the subset's id 4 is valid
    loss = bag_cross_entropy(z, weight, None, subset)  # loose bounds fail, the exact check passes
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"target id 9 \(row 0\) is out of range"):
        bag_cross_entropy(torch.randn(1, 3), weight, None, targets.select(torch.tensor([0])))
