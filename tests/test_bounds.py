"""fastmi.stats.bounds: formulas at hand-computed points and at the edges, confidence limits, and the
bounds on synthetic channels whose mutual information is known in closed form."""

import math

import numpy as np
import pytest
import torch

from fastmi import BagTargets
from fastmi.stats.bounds import (
    binary_entropy_bits,
    clopper_pearson_upper,
    entropy_bits,
    fano_lower_bound,
    layer_bounds,
    list_fano_lower_bound,
    token_entropy_bits,
    upper_confidence_mean,
    variational_lower_bound,
)

LN2 = math.log(2)


# ---- formulas at hand-computed points -----------------------------------------------------------
def test_binary_entropy_points_and_edges():
    assert binary_entropy_bits(0.5) == pytest.approx(1.0)
    # h(1/4) = 1/4 * 2 + 3/4 * log2(4/3) = 0.5 + 0.311278
    assert binary_entropy_bits(0.25) == pytest.approx(0.8112781245)
    assert binary_entropy_bits(0.0) == 0.0 and binary_entropy_bits(1.0) == 0.0
    values = binary_entropy_bits(np.array([0.0, 0.25, 0.75, 1.0]))
    np.testing.assert_allclose(values, [0.0, 0.8112781245, 0.8112781245, 0.0])
    with pytest.raises(ValueError, match="p must lie in"):
        binary_entropy_bits(1.5)
    with pytest.raises(ValueError, match="finite"):
        binary_entropy_bits(float("nan"))


def test_entropy_plugin_and_miller_madow():
    # p = (1/4, 1/4, 1/2): 1.5 bits; Miller-Madow adds (m-1)/(2 N ln 2) = 2 / (8 ln 2).
    assert entropy_bits([1, 1, 2]) == pytest.approx(1.5)
    assert entropy_bits([1, 1, 2], method="miller_madow") == pytest.approx(1.5 + 2 / (8 * LN2))
    # Zero counts are symbols never seen: they change neither H nor m.
    assert entropy_bits([0, 2, 0, 2]) == pytest.approx(1.0)
    assert entropy_bits([0, 2, 0, 2], method="miller_madow") == pytest.approx(1.0 + 1 / (8 * LN2))
    # Fractional weights and torch input; one symbol and no mass at all are 0, never NaN.
    assert entropy_bits(torch.tensor([0.5, 0.5])) == pytest.approx(1.0)
    assert entropy_bits([7]) == 0.0 and entropy_bits([7], method="miller_madow") == 0.0
    assert entropy_bits([0, 0]) == 0.0 and entropy_bits([]) == 0.0
    with pytest.raises(ValueError, match="nonnegative"):
        entropy_bits([1, -1])
    with pytest.raises(ValueError, match="method"):
        entropy_bits([1, 1], method="jackknife")


def test_token_entropy_weights_each_sentence_equally():
    # Sentences [1 1 2] and [3]: p(1) = (2/3)/2, p(2) = (1/3)/2, p(3) = 1/2.
    expected = (1 / 3) * math.log2(3) + (1 / 6) * math.log2(6) + 0.5
    targets = BagTargets.from_token_lists([[1, 1, 2], [3]])
    assert token_entropy_bits(targets) == pytest.approx(expected)
    # An empty row (only special tokens) holds nothing to draw and does not count in N.
    with_empty = BagTargets.from_token_lists([[1, 1, 2], [], [3]])
    assert token_entropy_bits(with_empty) == pytest.approx(expected)
    mm = token_entropy_bits(with_empty, method="miller_madow")
    assert mm == pytest.approx(expected + 2 / (2 * 2 * LN2))  # m = 3 symbols, N = 2 sentences
    assert token_entropy_bits(BagTargets.from_token_lists([[], []])) == 0.0


def test_fano_points_and_edges():
    # 3 - h(0.1) - 0.1 log2 9 = 3 - 0.4689956 - 0.3169925
    assert fano_lower_bound(0.1, 3.0, 10) == pytest.approx(2.2140119)
    assert fano_lower_bound(0.0, 3.0, 10) == pytest.approx(3.0)  # no error: all of H(T)
    # At (M-1)/M the bound is H - log2 M; past it the value stays there (vacuous) instead of rising.
    assert fano_lower_bound(0.9, 3.0, 10) == pytest.approx(3.0 - math.log2(10))
    assert fano_lower_bound(1.0, 3.0, 10) == pytest.approx(3.0 - math.log2(10))
    grid = np.linspace(0, 1, 201)
    values = fano_lower_bound(grid, 3.0, 10)
    assert np.all(np.diff(values) <= 1e-12) and np.all(np.isfinite(values))
    # M = 1: nothing to confuse T with; M = 2: the binary case H - h(P).
    assert fano_lower_bound(0.0, 0.0, 1) == 0.0 and fano_lower_bound(1.0, 0.0, 1) == 0.0
    assert fano_lower_bound(0.25, 1.0, 2) == pytest.approx(1.0 - 0.8112781245)
    assert fano_lower_bound(0.3, 0.0, 5) < 0  # entropy 0: raw value, negative means vacuous
    with pytest.raises(ValueError, match="alphabet_size"):
        fano_lower_bound(0.1, 1.0, 0)


def test_list_fano_points_and_edges():
    # 5 - h(0.2) - 0.8 log2 4 - 0.2 log2 32 = 5 - 0.7219281 - 1.6 - 1.0
    assert list_fano_lower_bound(0.2, 4, 5.0, 36) == pytest.approx(1.6780719)
    # k = 1 is Fano's bound.
    for p in (0.0, 0.1, 0.5, 0.95):
        assert list_fano_lower_bound(p, 1, 3.0, 10) == pytest.approx(fano_lower_bound(p, 3.0, 10))
    # Error 0 with a list of k: H - log2 k (T is somewhere among k candidates).
    assert list_fano_lower_bound(0.0, 4, 5.0, 36) == pytest.approx(3.0)
    # k >= M: the list is the whole alphabet, which says nothing about z: H - log2 M, vacuous.
    assert list_fano_lower_bound(0.0, 10, 3.0, 10) == pytest.approx(3.0 - math.log2(10))
    assert list_fano_lower_bound(0.0, 50, 3.0, 10) == pytest.approx(3.0 - math.log2(10))
    assert list_fano_lower_bound(0.7, 50, 3.0, 10) == pytest.approx(3.0 - math.log2(10))
    # Non-increasing in P_k, capped past (M-k)/M at H - log2 M.
    values = list_fano_lower_bound(np.linspace(0, 1, 201), 3, 4.0, 12)
    assert np.all(np.diff(values) <= 1e-12) and values[-1] == pytest.approx(4.0 - math.log2(12))
    assert list_fano_lower_bound(1.0, 1, 0.0, 1) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        list_fano_lower_bound(0.1, 0, 3.0, 10)


def test_variational_points():
    assert variational_lower_bound(1.25, 3.0) == pytest.approx(1.75)
    assert variational_lower_bound(4.0, 3.0) == pytest.approx(-1.0)
    np.testing.assert_allclose(variational_lower_bound(np.array([0.0, 1.0]), 2.0), [2.0, 1.0])
    with pytest.raises(ValueError, match="nonnegative"):
        variational_lower_bound(-0.1, 3.0)


# ---- confidence limits --------------------------------------------------------------------------
def test_clopper_pearson_closed_forms_and_scipy():
    assert clopper_pearson_upper(0, 10) == pytest.approx(1 - 0.05 ** (1 / 10))
    assert clopper_pearson_upper(10, 10) == 1.0
    # n = 1, x = 0 at level 0.9: 1 - 0.1.
    assert clopper_pearson_upper(0, 1, level=0.9) == pytest.approx(0.9)
    stats = pytest.importorskip("scipy.stats", reason="scipy gives the Beta quantile to compare with")
    for x, n, level in [(3, 10, 0.95), (50, 1000, 0.95), (999, 1000, 0.9), (1234, 20000, 0.99)]:
        assert clopper_pearson_upper(x, n, level) == pytest.approx(stats.beta.ppf(level, x + 1, n - x), abs=1e-9)
    with pytest.raises(ValueError):
        clopper_pearson_upper(11, 10)


def test_bootstrap_ucb_on_bernoulli():
    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 2000, 20000):
        x = (rng.random(n) < 0.2).astype(np.float64)
        ucb = upper_confidence_mean(x)
        exact = clopper_pearson_upper(int(x.sum()), n)
        assert ucb > x.mean()
        # BCa agrees with the exact limit to within a small share of the interval's width.
        assert ucb == pytest.approx(exact, abs=0.15 * (exact - x.mean()))
        widths.append(ucb - x.mean())
    assert widths[0] > widths[1] > widths[2]
    # Seeded: same seed, same value; the percentile form runs too and is close.
    x = (rng.random(500) < 0.3).astype(np.float64)
    assert upper_confidence_mean(x, seed=3) == upper_confidence_mean(x, seed=3)
    assert upper_confidence_mean(x, method="percentile") == pytest.approx(upper_confidence_mean(x), abs=0.01)
    # The exact method on 0/1 values is Clopper-Pearson itself.
    assert upper_confidence_mean(x, method="clopper_pearson") == clopper_pearson_upper(int(x.sum()), 500)


def test_bootstrap_coverage():
    # 95% one-sided: over 200 seeded repetitions the limit should cover the true mean ~190 times.
    rng = np.random.default_rng(7)
    covered = sum(upper_confidence_mean(rng.random(300) < 0.15, n_bootstrap=500) >= 0.15 for _ in range(200))
    assert 180 <= covered <= 199


def test_constant_samples_use_the_exact_limit():
    # All errors 0: the bootstrap sees no spread; the limit is the exact one for that event.
    assert upper_confidence_mean(np.zeros(100)) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert upper_confidence_mean(np.ones(100)) == 1.0
    assert upper_confidence_mean(np.full(50, 2.5), value_range=(0.0, None)) == 2.5
    with pytest.raises(ValueError, match="lie in"):
        upper_confidence_mean(np.array([0.5, 1.5]))


# ---- layer_bounds -------------------------------------------------------------------------------
def test_layer_bounds_consistency_and_flags():
    rng = np.random.default_rng(0)
    errors = rng.random(400) * 0.6
    errors_k = errors * rng.random(400)
    ce = rng.random(400) * 2.0
    out = layer_bounds(errors, errors_k, torch.tensor(ce), entropy_bits=4.0, alphabet_size=64, k=5)
    assert out["p_error"] == pytest.approx(errors.mean()) and out["ce_bits"] == pytest.approx(ce.mean())
    for stat in ("p_error", "p_error_k", "ce_bits"):
        assert out[f"{stat}_ucb"] > out[stat]
    for point, lcb in (
        ("fano_bits", "fano_lcb"),
        ("list_fano_bits", "list_fano_lcb"),
        ("variational_bits", "variational_lcb"),
    ):
        assert 0 <= out[lcb] < out[point] <= 4.0
    assert out["fano_bits"] == pytest.approx(fano_lower_bound(errors.mean(), 4.0, 64))
    assert out["list_fano_lcb"] == pytest.approx(list_fano_lower_bound(out["p_error_k_ucb"], 5, 4.0, 64))
    assert out["variational_lcb"] == pytest.approx(4.0 - out["ce_bits_ucb"])
    assert out["fano_lcb_frac"] == pytest.approx(out["fano_lcb"] / 4.0)
    assert out["clamped"] == "" and out["level"] == 0.95 and out["k"] == 5 and out["H_T"] == 4.0
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in out.values())

    # A vacuous layer: every bound clamped to 0 and named.
    bad = layer_bounds(np.full(50, 0.99), np.full(50, 0.9), np.full(50, 9.0), 2.0, 64, 5)
    assert bad["clamped"].split(",") == [
        "fano_bits",
        "fano_lcb",
        "list_fano_bits",
        "list_fano_lcb",
        "variational_bits",
        "variational_lcb",
    ]
    assert all(bad[name] == 0.0 for name in bad["clamped"].split(","))


def test_layer_bounds_edges():
    # Perfect decoding: P_e = 0 exactly, but the upper limit is still positive, so lcb < H.
    n = 100
    out = layer_bounds(np.zeros(n), np.zeros(n), np.zeros(n), 3.0, 10, 3)
    assert out["fano_bits"] == 3.0 and out["p_error_ucb"] == pytest.approx(1 - 0.05 ** (1 / n))
    assert 0 < out["fano_lcb"] < 3.0 and out["variational_lcb"] == 3.0
    # Entropy 0 (one symbol): bounds 0, fractions 0, no NaN; a positive CE is flagged.
    out = layer_bounds(np.zeros(n), np.zeros(n), np.full(n, 0.5), 0.0, 1, 1)
    assert out["fano_bits"] == 0.0 and out["fano_frac"] == 0.0 and out["variational_frac"] == 0.0
    assert out["clamped"] == "variational_bits,variational_lcb"
    # k >= M: the list bound is vacuous (0, flagged), not H(T).
    out = layer_bounds(np.full(n, 0.5), np.zeros(n), np.ones(n), 2.5, 8, 8)
    assert out["list_fano_bits"] == 0.0 and "list_fano_bits" in out["clamped"].split(",")
    # Upper limit past (M-1)/M: the worst case over the interval, H - log2 M, clamped.
    out = layer_bounds(np.r_[np.ones(60), np.zeros(40)], np.zeros(n), np.ones(n), 0.9, 2, 1)
    assert out["fano_lcb"] == 0.0 and "fano_lcb" in out["clamped"]
    with pytest.raises(ValueError, match="same nonzero length"):
        layer_bounds(np.zeros(3), np.zeros(4), np.zeros(3), 1.0, 4, 2)
    with pytest.raises(ValueError, match="finite"):
        layer_bounds(np.array([0.1, np.nan]), np.zeros(2), np.zeros(2), 1.0, 4, 2)


# ---- synthetic channels -------------------------------------------------------------------------
def _channel_statistics(t, posterior, k):
    """Per-sample error, top-k error and CE (bits) of the decoder ``posterior`` [n, q] (one token
    per sentence, so n_S = 1), with ties broken by the smaller id as bag_topk does."""
    order = np.argsort(-posterior, axis=1, kind="stable")
    errors = (order[:, 0] != t).astype(np.float64)
    errors_k = (~(order[:, :k] == t[:, None]).any(axis=1)).astype(np.float64)
    ce = -np.log2(posterior[np.arange(t.size), t])
    return errors, errors_k, ce


@pytest.mark.parametrize("q,eps", [(8, 0.3), (50, 0.6), (4, 0.05)])
def test_symmetric_channel(q, eps):
    """T uniform on q symbols, z = one-hot of T kept w.p. 1 - eps, else another symbol at random.

    I(T;z) = log2 q - h(eps) - eps log2(q-1); the MAP decoder errs with probability eps, so
    Fano's bound is tight; the Bayes posterior's cross-entropy is H(T|z), so the variational one is too.
    """
    n, k = 20_000, 3
    rng = np.random.default_rng(q)
    t = rng.integers(0, q, n)
    flip = rng.random(n) < eps
    y = np.where(flip, (t + rng.integers(1, q, n)) % q, t)
    posterior = np.full((n, q), eps / (q - 1))
    posterior[np.arange(n), y] = 1 - eps
    true_mi = math.log2(q) - binary_entropy_bits(eps) - eps * math.log2(q - 1)

    h_t = token_entropy_bits(BagTargets.from_token_lists(t[:, None].tolist()))
    out = layer_bounds(*_channel_statistics(t, posterior, k), h_t, q, k)
    for name in ("fano_lcb", "list_fano_lcb", "variational_lcb"):
        assert out[name] <= true_mi, name
    assert abs(out["fano_bits"] - true_mi) < 0.1
    assert abs(out["variational_bits"] - true_mi) < 0.1
    assert true_mi - out["fano_lcb"] < 0.1 and true_mi - out["variational_lcb"] < 0.1
    assert out["list_fano_bits"] <= true_mi + 0.02  # a valid bound, though not tight here


def test_independent_channel():
    """z independent of T: I = 0; the best decoder is the marginal (non-uniform here)."""
    n, q, k = 20_000, 20, 4
    rng = np.random.default_rng(11)
    p = 0.8 ** np.arange(q)
    p /= p.sum()
    t = rng.choice(q, size=n, p=p)
    posterior = np.broadcast_to(p, (n, q))
    h_t = token_entropy_bits(BagTargets.from_token_lists(t[:, None].tolist()))
    out = layer_bounds(*_channel_statistics(t, posterior, k), h_t, q, k)
    for name in ("fano_lcb", "list_fano_lcb", "variational_lcb"):
        assert out[name] == 0.0, name  # none above the true 0 beyond its confidence
    for name in ("fano_bits", "list_fano_bits", "variational_bits"):
        assert out[name] <= 0.02, name
    assert {"fano_lcb", "list_fano_lcb", "variational_lcb"} <= set(out["clamped"].split(","))
