"""The probe settings for large vocabularies: sampled-softmax training (fastmi.probe.sampled_softmax) and the
probe through the model's own output embedding (fastmi.probe.heads, fastmi.models.unembedding), each held
against a dense torch reference."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_probe import bag_features, random_bags

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.models.unembedding import MissingUnembeddingError
from fastmi.probe.adamw import AdamW
from fastmi.probe.config import ProbeConfig
from fastmi.probe.evaluation import score_probes
from fastmi.probe.head_forms import LinearHead, UnembeddingHead, feature_stats
from fastmi.probe.heads import batch_loss, fit_heads
from fastmi.probe.sampled_softmax import NegativeSampler, parse_train_softmax, proposal_probabilities
from fastmi.probe.tied_unseen import TiedUnseen
from fastmi.probe.training import TrainConfig, standardize

FAST = TrainConfig(max_epochs=4, patience=2, batch_size=64)


def dense_bag_ce(logits: torch.Tensor, bags: BagTargets) -> torch.Tensor:
    """Reference: per-row (1/n) sum_i -log softmax(logits)_{x_i}, from materialised [.., B, M] logits."""
    dense = torch.zeros(logits.shape[-2:], dtype=logits.dtype)
    dense.index_put_((bags.row_index, bags.ids), bags.counts.to(logits.dtype), accumulate=True)
    share = dense / dense.sum(-1, keepdim=True).clamp(min=1)
    return -(share * torch.log_softmax(logits, -1)).sum(-1)


# ---- settings -------------------------------------------------------------------------------------
def test_train_softmax_setting_is_parsed_or_refused():
    assert parse_train_softmax("full") == (None, None)
    assert parse_train_softmax("sampled:256") == (256, "unigram")
    assert parse_train_softmax("sampled:8:loguniform") == (8, "loguniform")
    assert parse_train_softmax("sampled:8:uniform") == (8, "uniform")
    for bad in ("sampled", "sampled:0", "sampled:x", "sampled:4:zipf", "partial"):
        with pytest.raises(ValueError, match="train_softmax must be"):
            parse_train_softmax(bad)
    bags = random_bags(30, 6)
    with pytest.raises(ValueError, match="probe must be one of"):
        fastmi.recoverability({0: bag_features(bags, 6)}, targets=bags, vocab_size=6, probe="lens", progress=False)


# ---- sampled softmax ----------------------------------------------------------------------------------
@pytest.mark.parametrize("proposal", ["unigram", "loguniform", "uniform"])
def test_corrected_sub_vocabulary_estimates_the_partition_function(proposal):
    """exp(LSE over the candidates, log-Q corrected) is unbiased for sum_v exp(logit_v) (module docstring)."""
    M, K = 60, 7
    g = torch.Generator().manual_seed(0)
    marginal = torch.rand(M, generator=g, dtype=torch.float64) ** 4
    q = proposal_probabilities(proposal, marginal / marginal.sum(), 0.05)
    assert q.sum().item() == pytest.approx(1.0) and bool((q > 0).all())
    logits = torch.randn(M, generator=g, dtype=torch.float64) * 2
    batch = BagTargets.from_token_lists([[3, 17], [17, 40, 41]], vocab_size=M)
    sampler = NegativeSampler(q, K, torch.Generator().manual_seed(1))
    draws = 20_000
    estimates = torch.empty(draws, dtype=torch.float64)
    for i in range(draws):
        c = sampler.draw(batch)
        assert torch.equal(c.ids[c.targets.ids], batch.ids)  # targets point at their own ids
        assert bool((c.correction[torch.isin(c.ids, batch.ids)] == 0).all())
        estimates[i] = torch.exp(logits[c.ids] + c.correction.double()).sum()
    truth = logits.exp().sum()
    stderr = estimates.std() / math.sqrt(draws)
    assert abs(estimates.mean() - truth) < 4 * stderr + 1e-9 * truth


def torch_adamw(p: torch.Tensor, weight_decay: float) -> torch.optim.AdamW:
    """The reference: torch's own AdamW, single-tensor path (the one whose arithmetic ours follows)."""
    return torch.optim.AdamW([p], lr=0.1, weight_decay=weight_decay, foreach=False, fused=False)


def test_adamw_over_every_row_is_torch_adamw_bit_for_bit():
    """The full-softmax probe's optimiser (no rows named: every row) is AdamW itself."""
    g = torch.Generator().manual_seed(1)
    p = torch.randn(2, 9, 4, generator=g)
    ours = p.clone().requires_grad_(True)
    theirs = p.clone().requires_grad_(True)
    optimizer, reference = AdamW([ours], lr=0.1, weight_decay=[0.01]), torch_adamw(theirs, 0.01)
    for _ in range(5):
        grad = torch.randn(2, 9, 4, generator=g)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
    assert torch.equal(ours.detach(), theirs.detach())


def test_row_sparse_adam_is_adam_on_the_rows_it_touches():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(2, 9, 4, generator=g)
    dense = p.clone().requires_grad_(True)
    reference = torch_adamw(dense, 0.01)
    sparse = AdamW([p.clone()], lr=0.1, weight_decay=[0.01])
    rows = torch.tensor([1, 4, 5])
    for _ in range(3):
        grad = torch.randn(2, 3, 4, generator=g)
        sparse.step([(grad, rows)])
        full = torch.zeros(2, 9, 4)
        full[:, rows] = grad
        dense.grad = full
        reference.step()
    untouched = torch.tensor([0, 2, 3, 6, 7, 8])
    assert torch.equal(sparse.params[0][:, untouched], p[:, untouched])
    # Touched every step, so lazy and dense Adam agree on them exactly.
    assert torch.allclose(sparse.params[0][:, rows], dense.detach()[:, rows], atol=1e-6)
    dense_adam = AdamW([p.clone()], lr=0.1, weight_decay=[0.0])
    ref = p.clone().requires_grad_(True)
    ref_opt = torch_adamw(ref, 0.0)
    grad = torch.randn(2, 9, 4, generator=g)
    dense_adam.step([(grad, None)])
    ref.grad = grad
    ref_opt.step()
    assert torch.allclose(dense_adam.params[0], ref.detach(), atol=1e-7)


def test_row_sparse_adam_with_dense_moments_is_adam_with_zeros_elsewhere():
    g = torch.Generator().manual_seed(4)
    p = torch.randn(2, 9, 4, generator=g)
    ref = p.clone().requires_grad_(True)
    reference = torch_adamw(ref, 0.01)
    dense_moments = AdamW([p.clone()], lr=0.1, weight_decay=[0.01], lazy=False)
    for rows in (torch.tensor([1, 4, 5]), torch.tensor([0, 4]), torch.tensor([8])):
        grad = torch.randn(2, rows.numel(), 4, generator=g)
        dense_moments.step([(grad, rows)])
        full = torch.zeros(2, 9, 4)
        full[:, rows] = grad
        ref.grad = full
        reference.step()
    # Rows 2, 3, 6, 7 never had a gradient after the first step's momentum: they moved all the same.
    assert not torch.equal(dense_moments.params[0][:, 2], p[:, 2])
    assert torch.allclose(dense_moments.params[0], ref.detach(), atol=1e-6)


def test_row_sparse_adam_updates_a_gathered_copy_as_it_would_its_own_gather():
    g = torch.Generator().manual_seed(5)
    p = torch.randn(3, 10, 2, generator=g)
    rows = torch.tensor([0, 3, 7])
    grad = torch.randn(3, 3, 2, generator=g)
    own, given = (
        AdamW([p.clone()], lr=0.1, weight_decay=[0.0]),
        AdamW([p.clone()], lr=0.1, weight_decay=[0.0]),
    )
    own.step([(grad, rows)])
    given.step([(grad, rows, given.params[0].index_select(1, rows))])
    assert torch.equal(own.params[0], given.params[0]) and not torch.equal(own.params[0], p)


# ---- ids no training bag holds, tied into one row ---------------------------------------------------
def _bags_with_unseen_ids(M: int, seen: int, n: int, seed: int) -> BagTargets:
    """Training rows (the first n // 2) use ids < ``seen`` only; later rows also hold ids >= ``seen``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(n):
        top = seen if r < n // 2 else M
        rows.append(torch.randint(0, top, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist())
    return BagTargets.from_token_lists(rows, vocab_size=M)


def test_tied_validation_ce_is_the_exact_full_vocabulary_ce():
    M, seen, n, d = 40, 15, 60, 5
    bags = _bags_with_unseen_ids(M, seen, n, seed=1)
    marginal = torch.zeros(M, dtype=torch.float64)
    marginal[:seen] = 1.0 / seen
    tied = TiedUnseen.build(marginal)
    assert tied.size == M - seen and tied.width == seen + 1
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, n, d, generator=g)
    w, b = torch.randn(1, tied.width, d, generator=g), torch.randn(1, tied.width, generator=g)
    tied_bags, shift = tied.targets(bags)
    assert shift > 0  # the later rows hold unseen ids
    head = LinearHead(w, b, tied.offset())
    tied_ce, _ = batch_loss(head, z, tied_bags)
    # Reference: the expanded probe (every unseen id on the tied row's values) over all M ids.
    logits = z @ w.index_select(1, tied.rows).transpose(1, 2) + b.index_select(1, tied.rows).unsqueeze(1)
    expected = dense_bag_ce(logits.double(), bags).mean(-1)
    assert float(tied_ce[0].detach()) + shift == pytest.approx(float(expected[0]), abs=1e-5)


def test_tying_the_unseen_ids_changes_nothing_under_the_full_softmax():
    M, seen, n = 50, 20, 240
    bags = _bags_with_unseen_ids(M, seen, n, seed=3)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    train, val = torch.sort(order[:100]).values, torch.sort(order[100:160]).values
    train = train[train < n // 2]  # training rows hold seen ids only
    z = standardize(torch.stack([bag_features(bags, M, noise=0.2)[:, :seen] @ torch.randn(seen, 8)]), train)
    config = TrainConfig(max_epochs=6, patience=6, batch_size=16)
    args = (z[:, train], bags.select(train), z[:, val], bags.select(val), M, config)
    untied = fit_heads(*args, progress=False)
    tied = fit_heads(*args, progress=False, tie_unseen=True)
    assert untied.best_epoch == tied.best_epoch and tied.best_epoch[0] > 0
    assert tied.validation_ce_nats == pytest.approx(untied.validation_ce_nats, abs=1e-5)
    assert torch.allclose(tied.weight, untied.weight, atol=1e-5)
    assert torch.allclose(tied.bias, untied.bias, atol=1e-5)
    # The unseen ids' rows moved (they are pushed down) and stayed equal to each other.
    assert torch.equal(tied.weight[:, seen:], tied.weight[:, seen : seen + 1].expand_as(tied.weight[:, seen:]))
    assert float(tied.bias[0, seen]) < math.log(0.05 / M) - 0.01  # the smoothed prior's floor at the start


def test_sampled_training_always_holds_the_tied_row_and_never_draws_it():
    M, seen = 30, 10
    marginal = torch.zeros(M, dtype=torch.float64)
    marginal[:seen] = torch.rand(seen, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tied = TiedUnseen.build(marginal)
    q = proposal_probabilities("unigram", tied.collapse(marginal), 0.05)
    q[-1] = 0.0
    sampler = NegativeSampler(q / q.sum(), 50, torch.Generator().manual_seed(1), always=torch.tensor([seen]))
    batch = BagTargets.from_token_lists([[1, 2], [2, 5]], vocab_size=tied.width)
    for _ in range(20):
        c = sampler.draw(batch)
        assert int(c.ids[-1]) == seen and float(c.correction[-1]) == 0.0
    with pytest.raises(ValueError, match="sampled_adam"):
        fit_heads(
            torch.zeros(1, 4, 2),
            random_bags(4, 3),
            torch.zeros(1, 2, 2),
            random_bags(2, 3),
            3,
            TrainConfig(sampled_adam="sparse"),
            train_softmax="sampled:2",
            progress=False,
        )


@pytest.mark.parametrize("probe", ["linear", "unembedding"])
def test_held_out_ce_after_sampled_training_is_the_exact_full_softmax_ce(probe):
    M, n, d = 50, 240, 12
    bags = random_bags(n, M, seed=3)
    g = torch.Generator().manual_seed(3)
    u = torch.randn(M, d, generator=g)
    z = torch.stack([bag_features(bags, M, noise=0.2) @ u, torch.randn(n, d, generator=g)])
    train, val, test = torch.arange(160), torch.arange(160, 200), torch.arange(200, n)
    if probe == "linear":
        z = standardize(z, train)
    fitted = fit_heads(
        z[:, train],
        bags.select(train),
        z[:, val],
        bags.select(val),
        M,
        FAST,
        probe=probe,
        train_softmax="sampled:5",
        unembedding=(u, None),
        progress=False,
    )
    assert fitted.epochs_run >= 1
    scores = score_probes(fitted.features(z[:, test]), fitted.weight, fitted.bias, bags.select(test), M, k=3)
    # Reference: materialise the trained probe's logits over all M ids, in float64.
    features = fitted.features(z[:, test]).double()
    logits = features @ fitted.weight.double().transpose(1, 2) + fitted.bias.double().unsqueeze(1)
    expected = dense_bag_ce(logits, bags.select(test)) / math.log(2)
    assert torch.allclose(scores.ce_bits, expected, atol=1e-4)
    # The sampled probe learned something on the informative layer (not left at the prior).
    assert fitted.best_epoch[0] > 0


def test_sampled_training_gives_the_full_bound_on_a_large_zipf_alphabet():
    """q-ary symmetric channel over 5,000 symbols of which a Zipf few carry the mass; z = E[Y] for a
    random injective code E, so I(T; z) = I(T; Y) in closed form."""
    q, eps, n, d = 5000, 0.2, 8000, 24
    g = torch.Generator().manual_seed(11)
    p = 1.0 / torch.arange(1, q + 1, dtype=torch.float64) ** 1.3
    p /= p.sum()
    t = torch.multinomial(p, n, replacement=True, generator=g)
    flip = torch.rand(n, generator=g) < eps
    y = torch.where(flip, (t + torch.randint(1, q, (n,), generator=g)) % q, t)
    z = torch.randn(q, d, generator=g)[y]
    p_y = (1 - eps) * p + eps * (1 - p) / (q - 1)
    h_y = float(-(p_y * p_y.log2()).sum())
    true_mi = h_y - (-(1 - eps) * math.log2(1 - eps) - eps * math.log2(eps)) - eps * math.log2(q - 1)
    targets = BagTargets(torch.arange(n + 1), t, torch.ones(n, dtype=torch.long))
    # Measured here: full 2.488 bits, sampled:256 2.478, sampled:256:uniform 2.480 (dense Adam moments,
    # the 4,000-odd ids absent from the training rows tied into one row), true MI 4.509.  Neither probe
    # is the Bayes decoder (a random 24-d code of 5,000 symbols).  With lazy Adam (sampled_adam="lazy")
    # sampled:256 ends at 2.355, 0.13 bit below full: the rows a step does not sample stop moving, while
    # under the full softmax every absent id is pushed down at every step.
    config = TrainConfig(max_epochs=6, patience=2, batch_size=512)
    rows = {}
    for setting in ("full", "sampled:256", "sampled:256:uniform"):
        rows[setting] = fastmi.recoverability(
            {0: z},
            targets=targets,
            vocab_size=q,
            vocab="full",
            n_bootstrap=300,
            train=config,
            train_softmax=setting,
            progress=False,
        ).table[0]
    full = rows["full"]
    for setting in ("sampled:256", "sampled:256:uniform"):
        sampled = rows[setting]
        assert full["M"] == sampled["M"] == q and sampled["train_softmax"] == setting
        assert abs(sampled["variational_bits"] - full["variational_bits"]) < 0.05, setting
    for row in rows.values():
        assert row["variational_lcb"] <= true_mi
        assert row["variational_bits"] > 0.3 * true_mi  # the probe decodes: a bound worth comparing


# ---- the unembedding probe: forward and gradients against torch -------------------------------------
def _random_unembedding_head(u, num_layers, seed):
    g = torch.Generator().manual_seed(seed)
    M, d = u.shape
    z = torch.randn(num_layers, 40, d, generator=g) * 3 + 1
    mean, std = feature_stats(z)
    a = torch.randn(num_layers, d, d, generator=g) / math.sqrt(d)
    c = torch.randn(num_layers, d, generator=g)
    b = torch.randn(num_layers, M, generator=g)
    return z, UnembeddingHead(u, a, c, b, mean, std)


def _reference_unembedding_loss(z, u, a, c, b, mean, std, bags, rows=None, correction=None):
    h = torch.einsum("lij,lnj->lni", a, (z - mean) / std) + c.unsqueeze(1)
    weight = u if rows is None else u[rows]
    logits = h @ weight.T + (b if rows is None else b[:, rows]).unsqueeze(1)
    if correction is not None:
        logits = logits + correction
    return dense_bag_ce(logits, bags).mean(-1)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("sampled", [False, True])
def test_unembedding_probe_matches_torch_forward_and_gradients(tmp_path, arch, sampled):
    from tiny import make_tiny_model, random_sentences

    model_dir = make_tiny_model(arch, tmp_path / arch, hidden=16, layers=2)
    corpus = fastmi.Corpus.from_sentences(random_sentences(12, seed=4))
    cache = fastmi.extract(str(model_dir), corpus, cache_dir=tmp_path / "cache", progress=False)
    u, bias, _ = cache.unembedding()
    z, head = _random_unembedding_head(u, 2, seed=5)
    bags = random_bags(z.shape[1], u.shape[0], seed=6)
    candidates = None
    if sampled:
        q = torch.full((u.shape[0],), 1.0 / u.shape[0], dtype=torch.float64)
        candidates = NegativeSampler(q, 9, torch.Generator().manual_seed(7)).draw(bags)
    a, c = (p.clone().requires_grad_(True) for p in head.dense)
    head.dense = [a, c]
    loss, (b_view,) = batch_loss(head, z, bags, candidates)
    loss.sum().backward()

    a_ref, c_ref, b_ref = (t.detach().double().requires_grad_(True) for t in (a, c, head.rowwise[0]))
    rows = None if candidates is None else candidates.ids
    expected = _reference_unembedding_loss(
        z.double(),
        u.double(),
        a_ref,
        c_ref,
        b_ref,
        head.mean.double(),
        head.std.double(),
        bags if candidates is None else candidates.targets,
        rows,
        None if candidates is None else candidates.correction.double(),
    )
    expected.sum().backward()
    assert torch.allclose(loss.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(a.grad.double(), a_ref.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(c.grad.double(), c_ref.grad, rtol=1e-4, atol=1e-6)
    b_grad = b_ref.grad if rows is None else b_ref.grad[:, rows]
    assert torch.allclose(b_view.grad.double(), b_grad, rtol=1e-4, atol=1e-6)
    if rows is not None:  # nothing outside the candidates gets a gradient
        outside = torch.ones(u.shape[0], dtype=torch.bool)
        outside[rows] = False
        assert bool((b_ref.grad[:, outside] == 0).all())


@pytest.mark.parametrize("arch, tied", [("gpt2", True), ("llama", False), ("bert", True)])
def test_stored_output_embedding_is_the_models_own(tmp_path, arch, tied):
    from tiny import make_tiny_model, random_sentences
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    model_dir = make_tiny_model(arch, tmp_path / arch, hidden=16, layers=2)
    cache = fastmi.extract(str(model_dir), random_sentences(10, seed=8), cache_dir=tmp_path / "cache", progress=False)
    u, bias, source = cache.unembedding()
    assert ("tied" in source) == tied and bias is None
    if arch == "bert":  # a base BertModel checkpoint: the MLM decoder is tied to the word embeddings
        expected = AutoModelForMaskedLM.from_pretrained(model_dir).get_input_embeddings().weight
        assert torch.equal(u, expected.detach())
        return
    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert torch.equal(u, lm.get_output_embeddings().weight.detach())
    assert tied == torch.equal(u, lm.get_input_embeddings().weight.detach())
    # E is stored apart only where it is not U; the embedding probe then starts from either.
    e = cache.input_embedding()
    assert (e is None) == tied
    if not tied:
        assert torch.equal(e, lm.get_input_embeddings().weight.detach())
    # At the start A = I, c = 0 the probe is the model's own map: for mean pooling of the final
    # normed states, its logits are the mean over positions of the model's next-token logits.
    tokenizer_out = fastmi.models.loading.load_model(str(model_dir)).tokenizer(
        ["w1 w2 w3 w4", "w5 w6"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = lm(**tokenizer_out).logits
    mask = tokenizer_out["attention_mask"].unsqueeze(-1).float()
    expected = (logits * mask).sum(1) / mask.sum(1)
    hidden = lm(**tokenizer_out, output_hidden_states=True).hidden_states[-1].detach()
    pooled = ((hidden * mask).sum(1) / mask.sum(1)).unsqueeze(0)
    z = torch.cat([pooled, torch.randn(1, 6, pooled.shape[-1])], 1)  # more rows for the statistics
    mean, std = feature_stats(z)
    head = UnembeddingHead(u, torch.diag_embed(std.squeeze(1)), mean.squeeze(1), torch.zeros(1, u.shape[0]), mean, std)
    weight, b = head.output(None, head.rowwise)
    got = head.features(pooled) @ weight[0].T + b[:, None]
    assert torch.allclose(got[0], expected, atol=1e-4)


# ---- caches without U -----------------------------------------------------------------------------
def test_cache_without_output_embedding_probes_linear_and_refuses_unembedding(tmp_path):
    from tiny import make_tiny_model, random_sentences

    model_dir = make_tiny_model("gpt2", tmp_path / "gpt2", hidden=16, layers=1)
    corpus = fastmi.Corpus.from_sentences(random_sentences(60, seed=9))
    directory = tmp_path / "cache"
    fastmi.extract(str(model_dir), corpus, cache_dir=directory, progress=False)
    # Make it a cache from before fastmi stored U: no file, no manifest entry.
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["unembedding"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "unembedding.safetensors").unlink()
    old = fastmi.ActivationCache.open(directory)
    result = fastmi.recoverability(old, train=FAST, n_bootstrap=100, progress=False)
    assert [r["probe"] for r in result.table] == ["linear", "linear"]
    with pytest.raises(MissingUnembeddingError, match="holds no output embedding.*probe='linear'"):
        fastmi.recoverability(old, probe="unembedding", train=FAST, progress=False)
    # Extracting again resumes: only U is added, and the unembedding probe then runs.
    shard = directory / "layer_001" / "shard_00000.safetensors"
    before = shard.stat().st_mtime_ns
    cache = fastmi.extract(str(model_dir), corpus, cache_dir=directory, progress=False)
    assert shard.stat().st_mtime_ns == before
    result = fastmi.recoverability(
        cache, probe="unembedding", train_softmax="sampled:16", train=FAST, n_bootstrap=100, progress=False
    )
    assert {(r["probe"], r["train_softmax"]) for r in result.table} == {("unembedding", "sampled:16")}
    assert result.config["unembedding_source"].startswith("input embedding")
    assert all(0 <= r["variational_lcb"] <= r["H_T"] for r in result.table)


def test_damaged_output_embedding_is_never_read(tmp_path):
    from tiny import make_tiny_model, random_sentences

    from fastmi.activations.cache import CacheCorruptError

    model_dir = make_tiny_model("gpt2", tmp_path / "gpt2", hidden=16, layers=1)
    cache = fastmi.extract(str(model_dir), random_sentences(10), cache_dir=tmp_path / "cache", progress=False)
    path = tmp_path / "cache" / "unembedding.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match="checksum"):
        cache.unembedding()


def test_unembedding_gives_the_other_symbol_a_zero_row():
    """'other' (top:K's merged ids, the observed alphabet's unseen ones) has no row in U: the
    unembedding probe gives it a zero row, so its logit is its bias alone, and it trains."""
    from fastmi.data.alphabet import Alphabet
    from fastmi.probe.head_rows import head_rows

    bags, u = random_bags(40, 8), torch.randn(8, 8)
    alphabet = Alphabet.build("top:3", bags, 8, ())
    form, weight, _, _ = head_rows(None, alphabet, u, ProbeConfig(probe="unembedding", vocab="top:3"))
    assert form == "unembedding" and weight.shape == (alphabet.size, 8) == (3, 8)  # 2 ids and "other"
    torch.testing.assert_close(weight[:-1], u[alphabet.vocab_ids])
    assert not weight[-1].any()
    result = fastmi.recoverability(
        {0: bag_features(bags, 8)},
        targets=bags,
        vocab_size=8,
        vocab="top:3",
        probe="unembedding",
        unembedding=u,
        n_bootstrap=100,
        progress=False,
    )
    assert result.table[0]["probe"] == "unembedding" and result.table[0]["M"] == 3
    with pytest.raises(MissingUnembeddingError, match="needs unembedding=U"):
        fastmi.recoverability(
            {0: bag_features(bags, 8)}, targets=bags, vocab_size=8, probe="unembedding", progress=False
        )


def test_fused_adamw_step_is_torch_fused_adamw():
    """The fused path (CUDA's default, taken here on the CPU) is torch's fused AdamW, step for step,
    and within rounding of the unfused one."""
    g = torch.Generator().manual_seed(2)
    p = torch.randn(2, 9, 4, generator=g)
    ours, unfused, theirs = (p.clone().requires_grad_(True) for _ in range(3))
    optimizer = AdamW([ours], lr=0.1, weight_decay=[0.01], fused=True)
    plain = AdamW([unfused], lr=0.1, weight_decay=[0.01], fused=False)
    reference = torch.optim.AdamW([theirs], lr=0.1, weight_decay=0.01, fused=True)
    for _ in range(5):
        grad = torch.randn(2, 9, 4, generator=g)
        ours.grad, unfused.grad, theirs.grad = grad.clone(), grad.clone(), grad.clone()
        optimizer.step()
        plain.step()
        reference.step()
    assert torch.equal(ours.detach(), theirs.detach())
    torch.testing.assert_close(ours.detach(), unfused.detach(), rtol=1e-6, atol=1e-7)
