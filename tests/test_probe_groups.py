"""Probe layer groups: each finished group is saved, an interrupted probe resumes from them, and the
probe holds one group of layers in memory at a time, whatever the cache dtype."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from tiny import make_tiny_model, random_sentences

import fastmi
import fastmi.probe.group_fit
from fastmi.probe.training import TrainConfig

TRAIN = TrainConfig(max_epochs=3)


@pytest.fixture(autouse=True)
def _fastmi_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_groups")
    model = make_tiny_model("bert", root / "bert", hidden=16, layers=3)
    corpus = fastmi.Corpus.from_sentences(random_sentences(50, seed=4))
    return {
        dtype: fastmi.extract(str(model), corpus, cache_dir=root / dtype, cache_dtype=dtype, progress=False)
        for dtype in ("fp32", "bf16", "fp16")
    }


def group_memory(cache, layers_per_group: int, probe: str = "auto") -> int:
    """A max_memory that fits exactly ``layers_per_group`` layers of ``probe`` (the observed alphabet:
    the training ids plus "other")."""
    from fastmi.probe.config import ProbeConfig
    from fastmi.probe.memory import ProbeMemory
    from fastmi.probe.recoverability import prepare

    run = prepare(cache, ProbeConfig(train=TRAIN, probe=probe), progress=False)
    memory = ProbeMemory(cache.num_rows, cache.hidden_size, run.alphabet.size, TRAIN.batch_size, probe=run.probe)
    return memory.shared_bytes + layers_per_group * memory.layer_bytes


class CountingFit:
    """fit_heads, counting its calls; raises KeyboardInterrupt on call ``interrupt_at`` (a Ctrl-C)."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls, self.interrupt_at, self.real = 0, interrupt_at, fastmi.probe.group_fit.fit_heads

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def probe(cache, checkpoint_dir, **kwargs):
    # The linear probe: one fit_heads call per group ("auto" makes two, one per form).
    return fastmi.recoverability(
        cache,
        probe="linear",
        train=TRAIN,
        max_memory=group_memory(cache, 1, "linear"),
        progress=False,
        checkpoint_dir=checkpoint_dir,
        **kwargs,
    )


def test_an_interrupted_probe_resumes_from_its_saved_groups(caches, tmp_path, monkeypatch):
    cache = caches["fp32"]
    uninterrupted = probe(cache, tmp_path / "clean")
    assert uninterrupted.config["layer_groups"] == [[0], [1], [2], [3]]

    fit = CountingFit(interrupt_at=3)
    monkeypatch.setattr(fastmi.probe.group_fit, "fit_heads", fit)
    with pytest.raises(KeyboardInterrupt):
        probe(cache, tmp_path / "run")
    saved = sorted((tmp_path / "run").rglob("group_*.json"))
    assert [json.loads(p.read_text())["layers"] for p in saved] == [[0], [1]]  # two groups finished, kept

    fit = CountingFit()
    monkeypatch.setattr(fastmi.probe.group_fit, "fit_heads", fit)
    resumed = probe(cache, tmp_path / "run")
    assert fit.calls == 2  # only layers 2 and 3 were trained again
    assert resumed.table == uninterrupted.table
    assert resumed.config["training"] == uninterrupted.config["training"]

    # A finished run is read back whole; other settings share nothing with it.
    fit = CountingFit()
    monkeypatch.setattr(fastmi.probe.group_fit, "fit_heads", fit)
    assert probe(cache, tmp_path / "run").table == uninterrupted.table and fit.calls == 0
    other = probe(cache, tmp_path / "run", seed=1)
    assert fit.calls == 4 and other.table != uninterrupted.table


def test_the_default_checkpoint_lives_in_the_cache(caches, tmp_path):
    cache = caches["fp16"]
    result = fastmi.recoverability(cache, train=TRAIN, max_memory=group_memory(cache, 2), progress=False)
    assert len(list((cache.directory / "probes").rglob("group_*.json"))) == 2  # [[0, 1], [2, 3]]
    assert fastmi.ActivationCache.open(cache.directory).layers == [0, 1, 2, 3]  # the cache is untouched
    assert len(result) == 4


def test_saved_groups_of_other_data_are_not_reused(caches, tmp_path, monkeypatch):
    cache = caches["fp32"]
    tensors = {layer: cache.embeddings(layer) for layer in cache.layers}
    kwargs = dict(
        targets=cache.targets,
        vocab_size=int(cache.metadata["vocab_size"]),
        train=TRAIN,
        max_memory=group_memory(cache, 1),
        progress=False,
        checkpoint_dir=tmp_path / "raw",
    )
    first = fastmi.recoverability(tensors, **kwargs)
    fit = CountingFit()
    monkeypatch.setattr(fastmi.probe.group_fit, "fit_heads", fit)
    tensors[2] = tensors[2] + torch.randn_like(tensors[2])
    changed = fastmi.recoverability(tensors, **kwargs)
    assert fit.calls == 1  # layer 2 alone
    assert changed.table[0] == first.table[0] and changed.table[2] != first.table[2]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_the_probe_holds_one_group_of_layers_at_a_time(caches, tmp_path, monkeypatch, dtype):
    cache = caches[dtype]
    alive: list[weakref.ref] = []
    most_alive = 0
    real = fastmi.ActivationCache.embeddings

    def watched(self, layer):
        nonlocal most_alive
        most_alive = max(most_alive, sum(ref() is not None for ref in alive))
        x = real(self, layer)
        alive.append(weakref.ref(x))
        return x

    monkeypatch.setattr(fastmi.ActivationCache, "embeddings", watched)
    result = fastmi.recoverability(
        cache, train=TRAIN, max_memory=group_memory(cache, 2), progress=False, checkpoint_dir=tmp_path
    )
    assert result.config["layer_groups"] == [[0, 1], [2, 3]]
    assert len(alive) >= 4  # every layer was read
    assert most_alive <= 1  # while a layer loads, at most the other layer of its group is held


def test_half_precision_caches_probe_close_to_fp32(caches, tmp_path):
    results = {
        dtype: fastmi.recoverability(caches[dtype], train=TRAIN, progress=False, checkpoint_dir=tmp_path / dtype)
        for dtype in caches
    }
    for dtype in ("bf16", "fp16"):
        for a, b in zip(results["fp32"].table, results[dtype].table):
            assert b["ce_bits"] == pytest.approx(a["ce_bits"], abs=0.05)
            assert b["H_T"] == a["H_T"]


def test_a_checkpoint_directory_that_cannot_be_made_leaves_the_groups_in_memory(caches, tmp_path):
    cache = caches["fp32"]
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="cannot save probe groups under .*an interrupted run will start over"):
        unsaved = probe(cache, blocker / "groups")
    assert unsaved.table == probe(cache, tmp_path / "saved").table
    assert blocker.is_file() and not list(tmp_path.rglob("a file/*"))


def test_a_resumed_auto_vocab_run_reads_its_choice_instead_of_repeating_the_trials(caches, tmp_path, monkeypatch):
    cache = caches["fp32"]
    first = probe(cache, tmp_path / "run", vocab="auto")
    saved = list((tmp_path / "run").glob("vocab-choice-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == first.config["vocab_choice"]
    fit = CountingFit()
    monkeypatch.setattr(fastmi.probe.group_fit, "fit_heads", fit)
    again = probe(cache, tmp_path / "run", vocab="auto")
    assert fit.calls == 0 and again.table == first.table  # no trial, no group trained again
    assert again.config["vocab_choice"] == first.config["vocab_choice"]
    probe(cache, tmp_path / "run", vocab="auto", seed=1)  # other settings: a choice of their own
    assert len(list((tmp_path / "run").glob("vocab-choice-*.json"))) == 2 and fit.calls > 0
