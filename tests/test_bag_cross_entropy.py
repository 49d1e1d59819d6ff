"""bag_cross_entropy: every path (CPU blocks, Triton under the interpreter) against the reference.

Shapes are tiny and awkward on purpose: V = 300 is not a multiple of any tile, d = 37 is odd, the
CPU path runs with 4-row blocks so 13 rows end on a partial block, and the bags hold 1 to 64
distinct ids with counts up to 4, one empty row and the last id of the vocabulary.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import fastmi
from fastmi.kernels import backend, bag_cross_entropy, bag_cross_entropy_cpu
from fastmi.kernels.reference import bag_cross_entropy_reference

VOCAB, HIDDEN = 300, 37


def make_bags(num_rows: int, vocab: int = VOCAB, max_size: int = 64, seed: int = 0) -> fastmi.BagTargets:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_size + 1, (num_rows,), generator=gen)
    if num_rows > 2:
        sizes[2] = 0  # an empty row: loss 0, no gradient, left out of the mean
    ids = [torch.randperm(vocab, generator=gen)[: int(n)].sort().values for n in sizes]
    if num_rows > 1:
        ids[1] = torch.cat([ids[1][ids[1] != vocab - 1], torch.tensor([vocab - 1])])  # the last, partial tile
    offsets = torch.zeros(num_rows + 1, dtype=torch.long)
    torch.cumsum(torch.tensor([len(i) for i in ids]), 0, out=offsets[1:])
    flat = torch.cat(ids)
    counts = torch.randint(1, 5, (flat.numel(),), generator=gen)
    return fastmi.BagTargets(offsets, flat, counts)


def make_inputs(layers, num_rows, dtype=torch.float32, with_bias=True, vocab=VOCAB, hidden=HIDDEN):
    lead = () if layers is None else (layers,)
    z = torch.randn(*lead, num_rows, hidden).to(dtype).requires_grad_()
    weight = (0.3 * torch.randn(*lead, vocab, hidden)).to(dtype).requires_grad_()
    bias = (0.5 * torch.randn(*lead, vocab)).to(dtype).requires_grad_() if with_bias else None
    return z, weight, bias


def loss_and_grads(fn, z, weight, bias, targets, reduction, normalize, grad_seed=1):
    loss = fn(z, weight, bias, targets, reduction, normalize)
    inputs = [t for t in (z, weight, bias) if t is not None]
    upstream = torch.randn(loss.shape, generator=torch.Generator().manual_seed(grad_seed))
    return loss, torch.autograd.grad(loss, inputs, upstream.to(loss.dtype))


def assert_close(actual, expected, tol):
    """Max abs error within ``tol`` times the expected values' scale (at least 1)."""
    assert actual.shape == expected.shape
    scale = max(1.0, expected.float().abs().max().item())
    error = (actual.float() - expected.float()).abs().max().item()
    assert error <= tol * scale, f"max error {error:.3g} > {tol:.1g} * {scale:.3g}"


def check_against_reference(fn, z, weight, bias, targets, reduction, normalize, tol):
    loss, grads = loss_and_grads(fn, z, weight, bias, targets, reduction, normalize)
    ref_loss, ref_grads = loss_and_grads(bag_cross_entropy_reference, z, weight, bias, targets, reduction, normalize)
    assert loss.dtype == torch.float32
    assert_close(loss, ref_loss, tol)
    for grad, ref_grad, given in zip(grads, ref_grads, [t for t in (z, weight, bias) if t is not None]):
        assert grad.dtype == given.dtype
        assert_close(grad, ref_grad, tol)


def cpu_blocks(*args):
    return bag_cross_entropy(*args, block_rows=4)


def triton_interpreted(*args):
    # 4-row blocks: a scalar loss runs the row-block sweep with the Triton logit product, over
    # several blocks, the last one partial; the other reductions run the V-split kernels.
    with backend("triton"):
        return bag_cross_entropy(*args, block_rows=4)


# ---- CPU path: the full grid (each case takes milliseconds) -------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("normalize", ["row", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("layers,num_rows", [(None, 1), (None, 13), (3, 13)])
def test_cpu_matches_reference_fp32(layers, num_rows, with_bias, normalize, reduction):
    z, weight, bias = make_inputs(layers, num_rows, with_bias=with_bias)
    check_against_reference(cpu_blocks, z, weight, bias, make_bags(num_rows), reduction, normalize, tol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("layers", [None, 2])
def test_cpu_matches_reference_low_precision(layers, reduction, dtype):
    z, weight, bias = make_inputs(layers, 13, dtype=dtype)
    check_against_reference(cpu_blocks, z, weight, bias, make_bags(13), reduction, "row", tol=2e-2)


def test_cpu_default_block_covers_all_rows_in_one_block():
    z, weight, bias = make_inputs(None, 13)
    check_against_reference(bag_cross_entropy, z, weight, bias, make_bags(13), "mean", "row", tol=2e-5)


# ---- Triton kernels under the interpreter: a chosen cover of the grid (~1 s per case) -------------
@pytest.mark.parametrize(
    "layers,num_rows,with_bias,reduction,normalize,dtype",
    [
        (None, 13, True, "mean", "row", torch.float32),
        (None, 1, True, "sum", "none", torch.float32),
        (None, 13, False, "none", "row", torch.float32),
        (2, 13, True, "mean", "none", torch.float32),
        (2, 13, False, "none", "none", torch.float32),
        (None, 13, True, "mean", "row", torch.bfloat16),
        (2, 13, True, "sum", "row", torch.bfloat16),
        (None, 13, True, "none", "row", torch.float16),
    ],
)
def test_triton_matches_reference(layers, num_rows, with_bias, reduction, normalize, dtype):
    z, weight, bias = make_inputs(layers, num_rows, dtype=dtype, with_bias=with_bias)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    check_against_reference(triton_interpreted, z, weight, bias, make_bags(num_rows), reduction, normalize, tol)


# ---- properties shared by both paths -----------------------------------------------------------
PATHS = {"cpu": cpu_blocks, "triton": triton_interpreted}


@pytest.mark.parametrize("path", PATHS)
def test_one_id_bags_equal_cross_entropy(path):
    z, weight, bias = make_inputs(None, 11)
    labels = torch.randint(0, VOCAB, (11,))
    targets = fastmi.BagTargets(torch.arange(12), labels, torch.ones(11, dtype=torch.long))
    loss, grads = loss_and_grads(PATHS[path], z, weight, bias, targets, "mean", "row")
    expected, expected_grads = loss_and_grads(
        lambda z, w, b, t, *_: F.cross_entropy(F.linear(z, w, b), labels), z, weight, bias, targets, "mean", "row"
    )
    assert_close(loss, expected, 2e-5)
    for grad, ref in zip(grads, expected_grads):
        assert_close(grad, ref, 2e-5)


@pytest.mark.parametrize("path", PATHS)
def test_two_runs_are_bit_identical(path):
    z, weight, bias = make_inputs(2, 13)
    targets = make_bags(13)
    first = loss_and_grads(PATHS[path], z, weight, bias, targets, "mean", "row")
    second = loss_and_grads(PATHS[path], z, weight, bias, targets, "mean", "row")
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


@pytest.mark.parametrize("path", PATHS)
def test_empty_rows_give_zero_loss_and_gradient(path):
    z, weight, bias = make_inputs(None, 13)
    targets = make_bags(13)
    loss = PATHS[path](z, weight, bias, targets, "none", "row")
    loss.sum().backward()
    assert loss[2].item() == 0.0 and bool((loss[targets.lengths > 0] > 0).all())
    assert bool((z.grad[2] == 0).all()) and bool((z.grad[0] != 0).any())


def test_only_requested_gradients_and_none_under_no_grad(monkeypatch):
    calls = []
    sweep = bag_cross_entropy_cpu.sweep
    monkeypatch.setattr(bag_cross_entropy_cpu, "sweep", lambda *a, **k: calls.append(k) or sweep(*a, **k))
    z, weight, bias = make_inputs(None, 13)
    targets = make_bags(13)
    with torch.no_grad():
        value = bag_cross_entropy(z, weight, bias, targets)
    assert calls[-1]["row_coef"] is None  # no gradient work at all
    assert_close(value, bag_cross_entropy_reference(z, weight, bias, targets), 2e-5)

    frozen = weight.detach()
    loss = bag_cross_entropy(z, frozen, None, targets, "mean", "row")
    assert calls[-1]["needs"] == (True, False, False)
    (grad_z,) = torch.autograd.grad(loss, [z])
    (ref_grad_z,) = torch.autograd.grad(bag_cross_entropy_reference(z, frozen, None, targets), [z])
    assert_close(grad_z, ref_grad_z, 2e-5)


def test_torch_compile_module_matches_eager():
    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(HIDDEN, HIDDEN)
            self.head = torch.nn.Linear(HIDDEN, VOCAB)

        def forward(self, x, targets):
            return bag_cross_entropy(torch.tanh(self.proj(x)), self.head.weight, self.head.bias, targets)

    probe, x, targets = Probe(), torch.randn(13, HIDDEN), make_bags(13)
    eager = probe(x, targets)
    eager_grads = torch.autograd.grad(eager, list(probe.parameters()))
    compiled = torch.compile(probe)(x, targets)
    compiled_grads = torch.autograd.grad(compiled, list(probe.parameters()))
    assert_close(compiled, eager, 1e-6)
    for got, want in zip(compiled_grads, eager_grads):
        assert_close(got, want, 1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_out_of_range_ids_raise_before_any_launch(path):
    z, weight, bias = make_inputs(None, 4)
    too_big = fastmi.BagTargets(
        torch.tensor([0, 1, 3, 3, 4]), torch.tensor([5, 7, VOCAB, 2]), torch.ones(4, dtype=torch.long)
    )
    with pytest.raises(ValueError, match=rf"target id {VOCAB} \(row 1\) is out of range"):
        PATHS[path](z, weight, bias, too_big, "mean", "row")
    negative = SimpleNamespace(offsets=torch.tensor([0, 1, 1, 1, 1]), ids=torch.tensor([-3]), counts=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"target id -3 \(row 0\) is out of range"):
        PATHS[path](z, weight, bias, negative, "mean", "row")


def test_bad_arguments_name_the_problem():
    z, weight, bias = make_inputs(None, 4)
    targets = make_bags(4)
    with pytest.raises(ValueError, match="reduction"):
        bag_cross_entropy(z, weight, bias, targets, reduction="avg")
    with pytest.raises(ValueError, match="normalize"):
        bag_cross_entropy(z, weight, bias, targets, normalize="token")
    with pytest.raises(ValueError, match="targets have 13 rows but z has 4"):
        bag_cross_entropy(z, weight, bias, make_bags(13))
    with pytest.raises(ValueError, match="d=37"):
        bag_cross_entropy(z, weight[:, :-1], bias, targets)


def test_validate_false_gives_the_same_result():
    z, weight, bias = make_inputs(None, 13)
    targets = make_bags(13)
    assert torch.equal(
        bag_cross_entropy(z, weight, bias, targets, validate=False), bag_cross_entropy(z, weight, bias, targets)
    )


class _LargestLogitSizedTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest new tensor any torch op returns (a view or an ``out=`` result shares an
    argument's storage: no new memory), leaving out [.., d]-shaped ones: the weight gradient is
    V x d by nature."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden, self.largest = hidden, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        known = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in known:
                continue
            if t.dim() == 0 or t.shape[-1] != self.hidden:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("path", [*PATHS, "reference"])
def test_no_tensor_as_large_as_the_logits(path):
    z, weight, bias = make_inputs(None, 13)
    targets = make_bags(13)
    fn = bag_cross_entropy_reference if path == "reference" else PATHS[path]
    with _LargestLogitSizedTensor(HIDDEN) as watch:
        fn(z, weight, bias, targets, "mean", "row").backward()
    # The reference is the control: it must trip the check the fused paths pass.
    assert (watch.largest >= 13 * VOCAB) == (path == "reference")


# ---- gradient filtering (filter_eps) -------------------------------------------------------------
HOT_IDS = torch.arange(5) * 60  # the few ids that take nearly all the probability mass


def peaked_inputs(num_rows, seed=0):
    """Logits of the hot ids ~20 above the rest: every other softmax is ~1e-9."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_rows, HIDDEN, generator=gen).requires_grad_()
    weight = (0.1 * torch.randn(VOCAB, HIDDEN, generator=gen)).requires_grad_()
    bias = torch.zeros(VOCAB).index_fill_(0, HOT_IDS, 20.0).requires_grad_()
    return z, weight, bias


def filtered(path, filter_eps, **options):
    def fn(*args):
        if path == "triton":
            with backend("triton"):
                return bag_cross_entropy(*args, filter_eps=filter_eps, **{"block_rows": 4, **options})
        return bag_cross_entropy(*args, filter_eps=filter_eps, **options)

    return fn


@pytest.mark.parametrize("path", PATHS)
def test_filter_off_or_unable_to_skip_is_bit_identical(path):
    z, weight, bias = make_inputs(2, 13)
    targets = make_bags(13)
    exact = loss_and_grads(PATHS[path], z, weight, bias, targets, "mean", "row")
    options = {"block_rows": 4}
    # 1e-30 is below every softmax of these inputs: nothing is skipped, the dense products run.
    for eps in (None, 1e-30):
        loss, grads = loss_and_grads(filtered(path, eps, **options), z, weight, bias, targets, "mean", "row")
        assert torch.equal(loss, exact[0])
        assert all(torch.equal(a, b) for a, b in zip(grads, exact[1]))


@pytest.mark.parametrize(
    "path,reduction",
    [("cpu", "sum"), ("cpu", "none"), ("triton", "sum")],  # cpu: fused / lse backward
)
def test_filtered_gradients_within_the_dropped_mass(path, reduction):
    eps = 1e-6
    z, weight, bias = peaked_inputs(13)
    targets = make_bags(13, max_size=3)
    fn = filtered(path, eps, block_rows=4)
    # normalize="none" and an upstream gradient of ones: every row's coefficient is 1, so each
    # dropped dlogit is C_b * softmax < C_b * eps.
    loss = fn(z, weight, bias, targets, reduction, "none")
    dz, dw, db = torch.autograd.grad(loss, (z, weight, bias), torch.ones_like(loss))
    ref_loss = bag_cross_entropy_reference(z, weight, bias, targets, reduction, "none")
    ref_dz, ref_dw, ref_db = torch.autograd.grad(ref_loss, (z, weight, bias), torch.ones_like(ref_loss))
    assert_close(loss, ref_loss, 2e-5)  # the loss is never filtered
    assert_close(db, ref_db, 2e-5)
    lengths = targets.lengths.float()
    dz_bound = eps * lengths[:, None] * weight.detach().abs().sum(0)[None, :]
    dw_bound = eps * (lengths[:, None] * z.detach().abs()).sum(0)[None, :]
    assert bool(((dz - ref_dz).abs() <= dz_bound + 1e-5).all())
    assert bool(((dw - ref_dw).abs() <= dw_bound + 1e-5).all())
    # The filter did act: most W rows got nothing, where every exact row is non-zero.
    skipped = (dw == 0).all(1)
    assert int(skipped.sum()) > VOCAB // 2 and not bool((ref_dw == 0).all(1).any())
    assert not bool(skipped[HOT_IDS].any()) and not bool(skipped[targets.ids].any())


@pytest.mark.parametrize("path", PATHS)
def test_filter_never_skips_a_target_column(path):
    z, weight, bias = peaked_inputs(4, seed=1)
    rare = VOCAB - 1  # softmax ~1e-9, far below eps, but row 0's bag holds it
    targets = fastmi.BagTargets(
        torch.tensor([0, 2, 3, 3, 4]), torch.tensor([rare, 60, 120, 7]), torch.ones(4, dtype=torch.long)
    )
    loss, (dz, dw, db) = loss_and_grads(filtered(path, 1e-4), z, weight, bias, targets, "mean", "row")
    _, (ref_dz, ref_dw, ref_db) = loss_and_grads(bag_cross_entropy_reference, z, weight, bias, targets, "mean", "row")
    # One row block (CPU default) / all rows (Triton): the target columns' grad_W rows are exact.
    for column in (rare, 60, 120, 7):
        assert_close(dw[column], ref_dw[column], 2e-5)
    assert bool((dw[1:7] == 0).all())  # while ordinary cold columns were skipped
    assert bool((ref_dw[1:7] != 0).any())


@pytest.mark.parametrize("eps", [0.0, -1e-6, float("nan"), float("inf")])
def test_bad_filter_eps_is_a_value_error(eps):
    z, weight, bias = make_inputs(None, 4)
    with pytest.raises(ValueError, match="filter_eps"):
        bag_cross_entropy(z, weight, bias, make_bags(4), filter_eps=eps)
