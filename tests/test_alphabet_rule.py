"""The alphabet is fixed before any held-out sentence is read (docs/theory.md §7): "observed" is the
training ids plus "other", whose bias is calibrated on validation; "top:K" ranks on training and
validation counts; neither moves when the held-out sentences change."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import fastmi
import fastmi.probe.group_fit
import fastmi.probe.recoverability as recoverability_module
from fastmi.data.alphabet import Alphabet
from fastmi.data.bags import BagTargets
from fastmi.data.split import Split
from fastmi.probe.config import ProbeConfig
from fastmi.probe.other_bias import calibrate_other_bias
from fastmi.probe.recoverability import prepare
from fastmi.probe.training import TrainConfig

FAST = TrainConfig(max_epochs=4, patience=2, batch_size=64)
VOCAB, ROWS, RARE = 60, 160, range(40, 60)  # ids 40..59 occur in held-out sentences only


def random_ids(high: int, most: int, g: torch.Generator) -> list[int]:
    return torch.randint(0, high, (int(torch.randint(1, most + 1, (1,), generator=g)),), generator=g).tolist()


def corpus(held_out_ids: dict[int, list[int]] | None = None, seed: int = 0):
    """Bags of ids < 40, features that show them, a split, and rare ids added to held-out rows."""
    g = torch.Generator().manual_seed(seed)
    rows = [
        torch.randint(0, 40, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist() for _ in range(ROWS)
    ]
    split = Split.make(ROWS, 0.25, seed=3)
    for row, extra in (held_out_ids or {}).items():
        rows[row] = rows[row] + extra
    bags = BagTargets.from_token_lists(rows, vocab_size=VOCAB)
    dense = torch.zeros(ROWS, 40)
    base = BagTargets.from_token_lists([[t for t in r if t < 40] for r in rows], vocab_size=40)
    dense.index_put_((base.row_index, base.ids), base.counts.float(), accumulate=True)
    z = dense / base.lengths.clamp(min=1).unsqueeze(1) + 0.3 * torch.randn(ROWS, 40, generator=g)
    return {0: z}, bags, split


def rare_assignment(split: Split, seed: int) -> dict[int, list[int]]:
    """Each rare id given to one held-out sentence, the sentences drawn by ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(split.test, size=len(RARE), replace=True)
    out: dict[int, list[int]] = {}
    for token, row in zip(RARE, chosen):
        out.setdefault(int(row), []).append(token)
    return out


def fitted_weights(monkeypatch, layers, bags, split, **kwargs):
    """The probe's weight and (calibrated) bias of each run, caught on their way to scoring."""
    caught = []
    real = recoverability_module.score_probes

    def spy(z, weight, bias, *args, **kw):
        caught.append((weight.clone(), bias.clone()))
        return real(z, weight, bias, *args, **kw)

    monkeypatch.setattr(recoverability_module, "score_probes", spy)
    result = fastmi.recoverability(
        layers, targets=bags, vocab_size=VOCAB, split=split, train=FAST, n_bootstrap=100, progress=False, **kwargs
    )
    return caught[-1], result


def test_held_out_only_ids_are_not_in_the_alphabet_and_do_not_move_the_probe(monkeypatch):
    _, _, split = corpus()
    layers, bags_a, _ = corpus(rare_assignment(split, 1))
    _, bags_b, _ = corpus(rare_assignment(split, 2))  # the same rare ids, in other held-out sentences
    assert not torch.equal(bags_a.ids, bags_b.ids) or not torch.equal(bags_a.offsets, bags_b.offsets)
    config = ProbeConfig(train=FAST, n_bootstrap=100)
    run_a = prepare(layers, config, targets=bags_a, vocab_size=VOCAB, split=split, progress=False)
    run_b = prepare(layers, config, targets=bags_b, vocab_size=VOCAB, split=split, progress=False)
    assert (
        torch.equal(run_a.alphabet.vocab_ids, run_b.alphabet.vocab_ids) and run_a.alphabet.size == run_b.alphabet.size
    )
    assert not set(RARE) & set(run_a.alphabet.vocab_ids.tolist())
    assert run_a.alphabet.other and run_a.alphabet.size == run_a.alphabet.vocab_ids.numel() + 1
    (weight_a, bias_a), result_a = fitted_weights(monkeypatch, layers, bags_a, split)
    (weight_b, bias_b), result_b = fitted_weights(monkeypatch, layers, bags_b, split)
    assert torch.equal(weight_a, weight_b) and torch.equal(bias_a, bias_b)
    assert result_a.config["alphabet_from"] == "train" and result_a.config["other_calibrated_on"] == "validation"
    assert result_a.config["training"]["0"]["other_bias"] == result_b.config["training"]["0"]["other_bias"]


def test_top_k_ranks_on_training_and_validation_counts_only():
    _, _, split = corpus()
    # Id 59 fills every held-out sentence: counted there, it would be the most frequent id.
    layers, bags, _ = corpus({int(row): [59] * 10 for row in split.test})
    config = ProbeConfig(vocab="top:8", train=FAST, n_bootstrap=100)
    run = prepare(layers, config, targets=bags, vocab_size=VOCAB, split=split, progress=False)
    assert 59 not in run.alphabet.vocab_ids.tolist() and run.alphabet.size == 8
    fit_rows = np.concatenate([split.train, split.validation])
    expected = Alphabet.build("top:8", bags.select(fit_rows), VOCAB)
    assert torch.equal(run.alphabet.vocab_ids, expected.vocab_ids)


def test_calibration_minimises_the_validation_cross_entropy():
    g = torch.Generator().manual_seed(0)
    num_layers, rows, size, dim = 2, 300, 6, 5
    z = torch.randn(num_layers, rows, dim, generator=g)
    weight = torch.randn(num_layers, size, dim, generator=g)
    bias = torch.randn(num_layers, size, generator=g)
    bias[:, -1] = -20.0  # as trained: "other" never seen
    tokens = [
        torch.randint(0, size, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
        for _ in range(rows)
    ]
    bags = BagTargets.from_token_lists(tokens, vocab_size=size)

    def validation_ce(b: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("lnd,lmd->lnm", z.double(), weight.double()) + b.double().unsqueeze(1)
        logp = logits.log_softmax(-1)
        dense = torch.zeros(rows, size, dtype=torch.float64)
        dense.index_put_((bags.row_index, bags.ids), bags.counts.double(), accumulate=True)
        return -(logp * (dense / bags.lengths.double().unsqueeze(1))).sum(-1).mean(-1)

    calibrated, log = calibrate_other_bias(z, weight, bias, bags, chunk=64)
    assert torch.equal(calibrated[:, :-1], bias[:, :-1])
    best = validation_ce(calibrated)
    assert (best < validation_ce(bias)).all()
    for shift in (-0.05, 0.05):
        moved = calibrated.clone()
        moved[:, -1] += shift
        assert (validation_ce(moved) >= best - 1e-9).all()
    assert log[0]["validation_share"] == pytest.approx(
        float(((bags.ids == size - 1) * bags.counts).double().div(bags.lengths[bags.row_index].double()).sum() / rows)
    )


def zipf_channel(q: int, eps: float, samples: int, seed: int):
    """T from a Zipf(1) source over q symbols, z the one-hot of T through a q-ary symmetric channel."""
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, q + 1, dtype=torch.float64)
    p = p / p.sum()
    t = torch.multinomial(p, samples, replacement=True, generator=g)
    flip = torch.rand(samples, generator=g) < eps
    noisy = torch.where(flip, (t + torch.randint(1, q, (samples,), generator=g)) % q, t)
    joint = p.unsqueeze(1) * torch.full((q, q), eps / (q - 1), dtype=torch.float64)
    joint.diagonal().copy_(p * (1 - eps))
    pz = joint.sum(0)
    true_mi = float((joint * (joint / (p.unsqueeze(1) * pz.unsqueeze(0))).log2()).sum())
    bags = BagTargets(torch.arange(samples + 1), t, torch.ones(samples, dtype=torch.long))
    return {0: torch.nn.functional.one_hot(noisy, q).float()}, bags, true_mi


def test_calibrated_other_on_a_channel_with_many_rare_symbols(monkeypatch):
    q = 400
    layers, bags, true_mi = zipf_channel(q, eps=0.2, samples=3000, seed=5)
    kwargs = dict(targets=bags, vocab_size=q, seed=0, n_bootstrap=300, progress=False, k=3)
    kwargs["train"] = TrainConfig(max_epochs=10, patience=2, batch_size=256)
    calibrated = fastmi.recoverability(layers, **kwargs)
    monkeypatch.setattr(fastmi.probe.group_fit, "with_calibrated_other", lambda fit: fit)
    plain = fastmi.recoverability(layers, **kwargs)
    row, before = calibrated.table[0], plain.table[0]
    assert row["M"] < q  # symbols no training sentence shows are merged into "other"
    assert row["variational_bits"] >= before["variational_bits"]
    assert row["variational_lcb"] >= before["variational_lcb"]
    for bound in ("fano", "list_fano", "variational"):
        assert row[f"{bound}_lcb"] <= true_mi, bound
    log = calibrated.config["training"]["0"]["other_bias"]
    assert log["calibrated"] > log["trained"] and 0 < log["validation_share"] < 0.2


def test_results_record_the_rule_and_old_groups_are_recomputed(tmp_path, capsys):
    layers, bags, split = corpus()
    kwargs = dict(targets=bags, vocab_size=VOCAB, split=split, train=FAST, n_bootstrap=100, progress=False)
    fastmi.recoverability(layers, checkpoint_dir=tmp_path, **kwargs)
    # Make the saved group look like one of the previous format, in another settings directory.
    saved = next(tmp_path.glob("*/group_*.json"))
    record = json.loads(saved.read_text())
    record["format"] = "fastmi-probe-group/2"
    old = tmp_path / "0123456789abcdef"
    old.mkdir()
    (old / saved.name).write_text(json.dumps(record))
    saved.unlink()
    capsys.readouterr()
    result = fastmi.recoverability(layers, checkpoint_dir=tmp_path, **kwargs)
    assert "older rule" in capsys.readouterr().err
    assert result.config["alphabet_from"] == "train"
    assert math.isfinite(result.table[0]["variational_bits"])


def test_a_sweep_result_made_under_the_old_rule_is_recomputed_with_a_notice(tmp_path, capsys):
    from tiny import make_tiny_model, random_sentences

    from fastmi.cli import main
    from fastmi.results.result import RecoverabilityResult

    model = make_tiny_model("bert", tmp_path / "bert", layers=2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(40, seed=9)) + "\n")
    out = tmp_path / "out"
    argv = ["sweep", "--model", str(model), "--corpus", str(corpus), "--out", str(out), "--max-epochs", "1"]
    assert main([*argv, "--no-progress"]) == 0
    [path] = list((out / "models" / "bert").glob("*.json"))
    old = RecoverabilityResult.from_json(path)
    assert old.config["sweep_key"]["alphabet_rule"] == {"alphabet_from": "train", "other_calibrated_on": "validation"}
    del old.config["sweep_key"]["alphabet_rule"]  # as a result made before the rule was part of its key
    old.to_json(path)
    capsys.readouterr()
    assert main([*argv, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("older alphabet rule") == 1 and "reusing" not in err
    assert "alphabet_rule" in RecoverabilityResult.from_json(path).config["sweep_key"]
