"""The per-layer step size that drops on a plateau (TrainConfig.plateau_factor): Adam with a step
factor per layer is Adam at that step on each layer alone, and the epoch loop lowers exactly the
layers that did not improve."""

from __future__ import annotations

import pytest
import torch

from fastmi.probe.adamw import AdamW
from fastmi.probe.config import TrainConfig
from fastmi.probe.training import train_epochs


def torch_adamw_steps(p: torch.Tensor, grads: list[torch.Tensor], lr: float, decay: float) -> torch.Tensor:
    """The reference: torch's own AdamW at step ``lr`` over ``grads``."""
    p = p.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([p], lr=lr, weight_decay=decay, foreach=False, fused=False)
    for grad in grads:
        p.grad = grad.clone()
        optimizer.step()
    return p.detach()


@pytest.mark.parametrize("fused", [False, True])
def test_a_layer_step_factor_is_adam_at_that_step_on_each_layer(fused):
    g = torch.Generator().manual_seed(7)
    p = torch.randn(3, 9, 4, generator=g)
    grads = [torch.randn(3, 9, 4, generator=g) for _ in range(4)]
    ours = p.clone()
    optimizer = AdamW([ours], lr=0.1, weight_decay=[0.01], fused=fused)
    optimizer.layer_lr = torch.tensor([1.0, 0.25, 0.25])
    for grad in grads:
        optimizer.step([(grad.clone(), None)])
    for layer, factor in enumerate([1.0, 0.25, 0.25]):
        expected = torch_adamw_steps(p[layer], [grad[layer] for grad in grads], 0.1 * factor, 0.01)
        assert torch.allclose(ours[layer], expected, atol=1e-6), layer
    # the factors matter: layer 1 did not move as far as it would have at the full step
    assert not torch.allclose(ours[1], torch_adamw_steps(p[1], [grad[1] for grad in grads], 0.1, 0.01), atol=1e-4)


def test_row_sparse_steps_take_the_layer_factor_too():
    g = torch.Generator().manual_seed(8)
    p = torch.randn(2, 6, 3, generator=g)
    rows = torch.tensor([0, 2, 5])
    grads = [torch.randn(2, 3, 3, generator=g) for _ in range(3)]
    for lazy in (True, False):
        ours = p.clone()
        optimizer = AdamW([ours], lr=0.1, weight_decay=[0.0], lazy=lazy)
        optimizer.layer_lr = torch.tensor([1.0, 0.5])
        for grad in grads:
            optimizer.step([(grad.clone(), rows)])
        for layer, factor in enumerate([1.0, 0.5]):
            # every step covers these rows, so lazy and dense moments both give plain Adam on them
            expected = torch_adamw_steps(p[layer, rows], [grad[layer] for grad in grads], 0.1 * factor, 0.0)
            assert torch.allclose(ours[layer, rows], expected, atol=1e-6), (lazy, layer)


def test_the_epoch_loop_lowers_the_step_of_the_layers_that_stalled_only():
    """Layer 0 improves every epoch; layer 1 stalls after epoch 2: only its factor drops, once an
    epoch, and training stops when layer 0 stalls too."""
    curves = iter(
        [
            torch.tensor([5.0, 5.0]),  # epoch 0 (the start)
            torch.tensor([4.0, 4.0]),
            torch.tensor([3.0, 3.5]),
            torch.tensor([2.0, 3.6]),
            torch.tensor([1.0, 3.7]),
            torch.tensor([1.5, 3.8]),
            torch.tensor([1.6, 3.9]),
        ]
    )
    param = torch.zeros(2, 3)
    optimizer = AdamW([param], lr=0.1, weight_decay=[0.0])
    config = TrainConfig(max_epochs=10, patience=2, plateau_factor=0.5)
    seen = []

    def step(rows):
        if not seen or seen[-1] is not None:
            seen.append(None)

    def validation():
        if optimizer.layer_lr is not None:
            seen.append(optimizer.layer_lr.clone())
        return next(curves)

    stopping, epochs = train_epochs(step, validation, [param], 8, config, 0, False, "t", optimizer)
    assert epochs == 6 and stopping.best_epoch.tolist() == [4, 2]
    # the factor read at the end of each epoch, i.e. set by the epochs before it
    factors = [s.tolist() for s in seen if s is not None]
    assert factors == [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.5], [1.0, 0.25], [0.5, 0.125]]
    assert optimizer.layer_lr.tolist() == [0.25, 0.0625]


def test_a_factor_of_one_leaves_the_optimiser_untouched():
    param = torch.zeros(1, 2)
    optimizer = AdamW([param], lr=0.1, weight_decay=[0.0])
    values = iter([torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([2.0])])
    train_epochs(lambda rows: None, lambda: next(values), [param], 4, TrainConfig(patience=2), 0, False, "t", optimizer)
    assert optimizer.layer_lr is None


def test_the_factor_is_a_share_and_stays_out_of_result_keys_at_its_default():
    from fastmi.probe.config import ProbeConfig

    for bad in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="plateau_factor"):
            TrainConfig(plateau_factor=bad)
    assert "plateau_factor" not in ProbeConfig().key()["train"]
    assert ProbeConfig(train=TrainConfig(plateau_factor=0.5)).key()["train"]["plateau_factor"] == 0.5
