"""Extraction: the hook-pooled layers equal pooling of ``output_hidden_states=True``.

Tiny random-weight GPT-2, BERT and Llama models (tests/tiny.py), both padding sides, mixed
lengths, every pooling mode; layer selection; the finite check; bad arguments.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import ARCHS, make_tiny_model, random_sentences

import fastmi
from fastmi.activations.extraction import NonFiniteActivationError, batch_plan, collate, parse_layers
from fastmi.data.bags import BagTargets
from fastmi.kernels.reference import POOL_MODES, masked_pool_reference
from fastmi.models.hooks import LayerPooler, find_layer_taps, forward_parameters

SIDES = ("right", "left")


def tiny_loaded(directory, padding_side: str = "right"):
    """A LoadedModel of a tiny model directory, with the tokenizer padding on ``padding_side``."""
    loaded = fastmi.load_model(str(directory))
    loaded.tokenizer.padding_side = padding_side
    return loaded


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model(arch, root / arch) for arch in ARCHS}


def reference_rows(loaded, sentences, layers, pooling, max_length=128):
    """Each sentence alone (no padding at all), pooled from output_hidden_states=True."""
    out = {l: [] for l in layers}
    with torch.inference_mode():
        for ids in fastmi.Corpus.from_sentences(sentences).tokenize(loaded.tokenizer, max_length):
            ids = torch.tensor([ids])
            mask = torch.ones_like(ids)
            hidden = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            assert len(hidden) == loaded.num_layers + 1
            for l in layers:
                out[l].append(masked_pool_reference(hidden[l], mask, pooling)[0])
    return {l: torch.stack(v) for l, v in out.items()}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_equal_output_hidden_states_on_one_padded_batch(model_dirs, arch, side):
    loaded = tiny_loaded(model_dirs[arch], side)
    sentences = random_sentences(7, seed=3, min_words=1, max_words=20)
    ids = fastmi.Corpus.from_sentences(sentences).tokenize(loaded.tokenizer, 64)
    assert len({len(t) for t in ids}) > 3  # genuinely mixed lengths
    inputs = collate(ids, loaded.tokenizer.pad_token_id, side, "cpu", forward_parameters(loaded.model))
    mask = inputs["attention_mask"]
    assert bool((mask[:, 0] if side == "left" else mask[:, -1]).eq(0).any())  # padding on that side
    layers = list(range(loaded.num_layers + 1))
    taps = find_layer_taps(loaded.model, loaded.num_layers)
    with torch.inference_mode():
        hidden = loaded.model(**inputs, output_hidden_states=True).hidden_states
        for pooling in POOL_MODES:
            with LayerPooler(loaded.model, taps, layers, pooling) as pooler:
                pooled = pooler.run(inputs)
            for l in layers:
                want = masked_pool_reference(hidden[l], mask, pooling)
                torch.testing.assert_close(pooled[l], want, rtol=1e-5, atol=1e-6, msg=f"{pooling} layer {l}")


def test_last_layer_is_the_final_norm_output_where_transformers_puts_it(model_dirs):
    # transformers ties hidden_states[-1] to last_hidden_state: after ln_f (GPT-2) / norm (Llama).
    for arch, norm in (("gpt2", "ln_f"), ("llama", "norm"), ("bert", None)):
        loaded = tiny_loaded(model_dirs[arch])
        taps = find_layer_taps(loaded.model, loaded.num_layers)
        assert (taps.final_norm is getattr(loaded.model, norm)) if norm else taps.final_norm is None
        assert len(taps.sources) == loaded.num_layers + 1


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("arch", ARCHS)
def test_extract_rows_match_unpadded_reference_in_corpus_order(model_dirs, tmp_path, arch, side):
    loaded = tiny_loaded(model_dirs[arch], side)
    sentences = random_sentences(11, seed=5, min_words=1, max_words=30)
    pooling = "mean" if arch != "gpt2" else "last"
    cache = fastmi.extract(
        loaded, sentences, pooling=pooling, cache_dir=tmp_path / "c", batch_size=3, shard_rows=5, progress=False
    )
    layers = list(range(loaded.num_layers + 1))
    assert cache.layers == layers and cache.num_shards == 3
    want = reference_rows(loaded, sentences, layers, pooling)
    for l in layers:
        got = cache.embeddings(l)
        assert got.dtype == torch.float32 and got.shape == (11, loaded.hidden_size)
        torch.testing.assert_close(got, want[l], rtol=1e-4, atol=2e-5, msg=f"layer {l}")
    meta = cache.metadata
    assert meta["num_rows"] == 11 and meta["pooling"] == pooling and meta["padding_side"] == side
    assert meta["architecture"] == arch and meta["num_layers"] == loaded.num_layers


@pytest.mark.parametrize("pooling", ["first", "max"])
def test_other_pooling_modes_end_to_end(model_dirs, tmp_path, pooling):
    loaded = tiny_loaded(model_dirs["bert"], "left")
    sentences = random_sentences(7, seed=8, min_words=1)
    cache = fastmi.extract(
        loaded, sentences, pooling=pooling, layers="0,2-3", cache_dir=tmp_path / "c", batch_size=3, progress=False
    )
    want = reference_rows(loaded, sentences, [0, 2, 3], pooling)
    assert cache.layers == [0, 2, 3]
    for l in cache.layers:
        torch.testing.assert_close(cache.embeddings(l), want[l], rtol=1e-4, atol=2e-5)


def test_targets_are_the_bags_of_the_model_inputs_without_special_tokens(model_dirs, tmp_path):
    loaded = tiny_loaded(model_dirs["bert"])
    sentences = random_sentences(12, seed=2)
    cache = fastmi.extract(loaded, sentences, layers="last", max_length=8, cache_dir=tmp_path / "c", progress=False)
    ids = fastmi.Corpus.from_sentences(sentences).tokenize(loaded.tokenizer, 8)
    want = BagTargets.from_token_lists(ids, exclude=loaded.special_ids)
    got = cache.targets
    for name in ("offsets", "ids", "counts"):
        assert torch.equal(getattr(got, name), getattr(want, name))
    specials = {loaded.tokenizer.cls_token_id, loaded.tokenizer.sep_token_id, loaded.tokenizer.pad_token_id}
    assert not specials & set(got.ids.tolist())
    assert got.lengths.max() <= 6  # max_length 8 minus [CLS] and [SEP]
    assert torch.equal(cache.lengths, torch.tensor([len(t) for t in ids]))
    assert cache.metadata["excluded_ids"] == sorted(loaded.special_ids)


def test_parse_layers():
    assert parse_layers("all", 3) == [0, 1, 2, 3]
    assert parse_layers("last", 3) == [3]
    assert parse_layers("0,3", 3) == [0, 3]
    assert parse_layers("1-2, 0", 3) == [0, 1, 2]
    assert parse_layers([-1, 0], 3) == [0, 3]
    for bad in ("4", "x", "3-1", [7], ""):
        with pytest.raises(ValueError):
            parse_layers(bad, 3)


def test_forward_stops_after_the_deepest_requested_layer(model_dirs, tmp_path):
    loaded = tiny_loaded(model_dirs["llama"])
    calls = []
    handle = loaded.model.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        cache = fastmi.extract(
            loaded, random_sentences(6), layers="0-1", cache_dir=tmp_path / "c", verify=False, progress=False
        )
    finally:
        handle.remove()
    assert cache.layers == [0, 1] and calls == []


def test_batches_are_grouped_by_length_within_shards():
    lengths = np.array([3, 9, 1, 0, 7, 7, 2, 5])
    plan = batch_plan(lengths, shard_rows=4, batch_size=2)
    assert [b.tolist() for b in plan] == [[1, 0], [2], [4, 5], [7, 6]]  # row 3 is empty: no forward


def test_non_finite_layer_fails_naming_layer_and_batch_and_writes_no_partial_shard(model_dirs, tmp_path):
    loaded = tiny_loaded(model_dirs["gpt2"])
    calls = []

    def poison(module, args, output):
        calls.append(1)
        if len(calls) > 4:  # the verify pass (2 calls) and shard 0 (2 batches) stay clean; shard 1 breaks
            return torch.full_like(output, float("nan"))

    handle = loaded.model.h[1].register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteActivationError, match=r"layer 2: .*batch 0 of shard 1"):
            fastmi.extract(
                loaded, random_sentences(12), cache_dir=tmp_path / "c", batch_size=3, shard_rows=6, progress=False
            )
    finally:
        handle.remove()
    shards = sorted(p.relative_to(tmp_path / "c").as_posix() for p in (tmp_path / "c").rglob("shard_*"))
    assert shards == [f"layer_{l:03d}/shard_00000.safetensors" for l in range(4)]
    units = json.loads((tmp_path / "c" / "manifest.json").read_text())["units"]
    assert all(set(v) == {"0"} for v in units.values())
    assert not list((tmp_path / "c").rglob(".tmp-*"))


def test_bad_arguments_fail_before_anything_is_written(model_dirs, tmp_path):
    loaded = tiny_loaded(model_dirs["gpt2"])
    for kwargs, match in (
        ({"pooling": "median"}, "pooling"),
        ({"batch_size": 0}, "batch_size"),
        ({"layers": "9"}, "out of range"),
        ({"dtype": "float16"}, "loaded"),
    ):
        with pytest.raises(ValueError, match=match):
            fastmi.extract(loaded, ["w1 w2"], cache_dir=tmp_path / "c", progress=False, **kwargs)
    assert not (tmp_path / "c").exists()


def test_extract_refuses_what_the_cli_refuses_in_its_own_words_before_loading(model_dirs, tmp_path, monkeypatch):
    """extract and `fastmi extract` share one check (fastmi.runtime.preflight): errors name the
    keyword arguments, and a model spec is refused on its config, before any weight loads."""
    import fastmi.models.loading
    from fastmi.runtime import preflight

    checked = []
    real_check = preflight.check_extraction_arguments
    monkeypatch.setattr(
        "fastmi.activations.extraction.check_extraction_arguments",
        lambda *a, **k: checked.append(a[0]) or real_check(*a, **k),
    )
    monkeypatch.setattr(fastmi.models.loading, "load_model", lambda *a, **k: pytest.fail("loaded before the checks"))
    spec = str(model_dirs["gpt2"])
    for kwargs, message in (
        ({"pooling": "median"}, "^pooling must be one of"),
        ({"batch_size": 0}, "^batch_size must be a positive integer"),
        ({"max_length": True}, "^max_length must be a positive integer"),
        ({"shard_rows": 0}, "^shard_rows must be a positive integer"),
        ({"shard_bytes": -1}, "^shard_bytes must be a positive integer"),
        ({"padding_side": "middle"}, "^padding_side must be 'left' or 'right'"),
        ({"layers": "9"}, "out of range: this model has layers 0..3"),
    ):
        with pytest.raises(ValueError, match=message):
            fastmi.extract(spec, ["w1 w2"], cache_dir=tmp_path / "c", progress=False, **kwargs)
    assert checked == [[spec]] * 7
    with pytest.raises(ValueError, match="^--batch-size must be a positive integer"):  # the CLI's words
        real_check([spec], batch_size=0)
    assert not (tmp_path / "c").exists()


class RecordingBar:
    """Stands in for tqdm: every update, and what was written to the cache by then."""

    bars: list[RecordingBar] = []

    def __init__(self, total, **kwargs):
        self.total, self.n, self.updates, self.closed = total, 0, [], False
        RecordingBar.bars.append(self)

    def update(self, n):
        self.n += n
        self.updates.append(n)

    def close(self):
        self.closed = True


def test_the_progress_bar_counts_sentences_batch_by_batch_not_shard_by_shard(model_dirs, tmp_path, monkeypatch):
    """One shard of a large model is minutes: a bar moved per shard sat at 0/1000 for 9.5 minutes."""
    import tqdm.auto

    from fastmi.activations.cache import CacheWriter

    loaded = tiny_loaded(model_dirs["gpt2"])  # before the stand-in: transformers' loading bar iterates
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    RecordingBar.bars = []
    written_at = []  # the bar's count whenever a shard is written
    real_write = CacheWriter.write_shard
    monkeypatch.setattr(
        CacheWriter, "write_shard", lambda self, *a: written_at.append(RecordingBar.bars[-1].n) or real_write(self, *a)
    )
    fastmi.extract(loaded, random_sentences(12), cache_dir=tmp_path / "c", batch_size=3, shard_rows=12, progress=True)
    (bar,) = RecordingBar.bars
    assert bar.total == 12 and bar.n == 12 and bar.closed
    assert bar.updates == [3, 3, 3, 3]  # every batch, in sentences
    assert written_at == [12]  # all of it moved before the one shard was finished


def test_the_bar_of_rank_0_adds_its_batches_to_every_rank_s_listed_shards(monkeypatch):
    """Under torchrun rank 0 draws the total of all ranks: its own sentences batch by batch, the
    others' as their shards are listed; it never moves back."""
    import tqdm.auto

    from fastmi.activations.progress import SentenceBar

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    RecordingBar.bars = []
    with SentenceBar(40, True, "m (2 processes)") as bar:
        bar.batch_done(4)
        bar.batch_done(4)  # rank 0's shard 0 (10 rows) is 8 rows in
        assert RecordingBar.bars[0].n == 8
        bar.shards_done(10 + 10)  # it finished shard 0; rank 1 had finished shard 1 meanwhile
        assert RecordingBar.bars[0].n == 20
        bar.batch_done(4)
        bar.shards_done(20)  # a stale count cannot take back rows
        assert RecordingBar.bars[0].n == 24
    with SentenceBar(40, False, "m") as quiet:
        quiet.batch_done(4)
        quiet.shards_done(10)
    assert len(RecordingBar.bars) == 1 and RecordingBar.bars[0].closed
