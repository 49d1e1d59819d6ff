"""The activation cache: crash safety, resumption, corruption, identity checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny import make_tiny_model, random_sentences

import fastmi
from fastmi.activations.cache import ActivationCache, CacheCorruptError, CacheWriter, default_cache_dir

SENTENCES = random_sentences(10, seed=11, min_words=1)
SETTINGS = dict(batch_size=3, shard_rows=4, progress=False)  # 3 shards: rows 0-3, 4-7, 8-9


@pytest.fixture(autouse=True)
def _fastmi_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_models")
    return {arch: str(make_tiny_model(arch, root / arch)) for arch in ("gpt2", "llama")}


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def cache_files(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.safetensors"))}


def units(directory) -> dict:
    return json.loads((directory / "manifest.json").read_text())["units"]


# Runs fastmi.extract in a child process that SIGKILLs itself half-way through the N-th atomic
# write (half the bytes in the temporary file, nothing renamed).  Nothing is cleaned up: that is
# the point.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import fastmi, fastmi.activations.cache as cache
    model, corpus, out, kill_at = sys.argv[1:]
    real_write, calls = cache.atomic_write_bytes, []

    def dying_write(path, data):
        calls.append(path)
        if len(calls) == int(kill_at):
            with open(path.parent / (cache.TMP_PREFIX + path.name + ".killed"), "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(path, data)

    cache.atomic_write_bytes = dying_write
    fastmi.extract(model, fastmi.Corpus.from_text_file(corpus), cache_dir=out, batch_size=3, shard_rows=4,
                   progress=False)
""")


# Writes: 1 manifest, 2 targets, 3 manifest, 4 output embedding, 5 manifest, 6 manifest (the input
# embedding is the output one: tied), then per shard 4 layer files and the manifest: shard 0 = writes
# 7..11, shard 1 = writes 12..16.  Killed at write 15,
# shard 1 has layers 0-2 renamed into place but unlisted, and layer 3 half-written to its temporary file.
def test_sigkilled_run_resumes_to_bit_identical_shards(models, corpus_file, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, models["gpt2"], str(corpus_file), str(killed), "15"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # Part-way: shard 0 finished for every layer, shard 1 not listed, whatever is on disk.
    assert units(killed) == {str(l): {"0": units(killed)[str(l)]["0"]} for l in range(4)}
    assert [p.parent.name for p in killed.rglob(".tmp-*")] == ["layer_003"]
    assert sorted(p.parent.name for p in killed.rglob("shard_00001.safetensors")) == [
        "layer_000",
        "layer_001",
        "layer_002",
    ]

    resumed = fastmi.extract(models["gpt2"], fastmi.Corpus.from_text_file(corpus_file), cache_dir=killed, **SETTINGS)
    clean = fastmi.extract(
        models["gpt2"], fastmi.Corpus.from_text_file(corpus_file), cache_dir=tmp_path / "clean", **SETTINGS
    )
    assert resumed.layers == clean.layers == [0, 1, 2, 3]
    assert cache_files(killed) == cache_files(tmp_path / "clean")  # every byte of every shard
    assert units(killed) == units(tmp_path / "clean")
    assert not list(killed.rglob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_damaged_shard_is_refused_then_reported_and_redone(models, tmp_path, damage, capsys):
    out = tmp_path / "c"
    layer1 = fastmi.extract(models["gpt2"], SENTENCES, cache_dir=out, **SETTINGS).embeddings(1)
    good = cache_files(out)
    victim = out / "layer_002" / "shard_00001.safetensors"
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(data[:-100])
    else:
        data[-7] ^= 0xFF  # inside the data region: same size, different bytes
        victim.write_bytes(bytes(data))

    cache = ActivationCache.open(out)
    with pytest.raises(CacheCorruptError, match="truncated" if damage == "truncate" else "checksum"):
        cache.embeddings(2)
    assert [(l, s) for l, s, _ in cache.verify()] == [(2, 1)]
    assert torch.equal(cache.embeddings(1), layer1)  # the other layers still read

    capsys.readouterr()
    redone = fastmi.extract(models["gpt2"], SENTENCES, cache_dir=out, **SETTINGS)
    said = [line for line in capsys.readouterr().err.splitlines() if "redoing" in line]
    assert len(said) == 1 and said[0].startswith("fastmi: ") and "redoing layer 2 shard 1" in said[0]
    assert cache_files(out) == good
    assert redone.verify() == [] and redone.embeddings(2).shape == (10, 16)


def test_cache_of_another_model_or_setting_is_refused_with_what_differs(models, tmp_path):
    out = tmp_path / "c"
    fastmi.extract(models["gpt2"], SENTENCES, cache_dir=out, **SETTINGS)
    before = cache_files(out)
    with pytest.raises(ValueError, match=r"another model, revision.*overwrite"):
        fastmi.extract(models["llama"], SENTENCES, cache_dir=out, **SETTINGS)
    with pytest.raises(ValueError, match=r"another pooling \(pooling: cache has 'mean', this run 'max'\)"):
        fastmi.extract(models["gpt2"], SENTENCES, pooling="max", cache_dir=out, **SETTINGS)
    with pytest.raises(ValueError, match="another corpus_fingerprint"):
        fastmi.extract(models["gpt2"], SENTENCES[:-1], cache_dir=out, **SETTINGS)
    with pytest.raises(ValueError, match="another max_length"):
        fastmi.extract(models["gpt2"], SENTENCES, max_length=7, cache_dir=out, **SETTINGS)
    assert cache_files(out) == before  # refusals touch nothing

    replaced = fastmi.extract(models["llama"], SENTENCES, cache_dir=out, overwrite=True, **SETTINGS)
    assert replaced.metadata["model"] == models["llama"] and replaced.metadata["architecture"] == "llama"
    assert replaced.verify() == [] and replaced.layers == [0, 1, 2, 3]


def test_layers_are_added_to_an_existing_cache_without_redoing_others(models, tmp_path):
    out = tmp_path / "c"
    first = fastmi.extract(models["gpt2"], SENTENCES, layers="last", cache_dir=out, **SETTINGS)
    assert first.layers == [3]
    last_layer = {k: v for k, v in cache_files(out).items() if k.startswith("layer_003/")}
    stamps = {p: p.stat().st_mtime_ns for p in (out / "layer_003").iterdir()}
    full = fastmi.extract(models["gpt2"], SENTENCES, layers="all", cache_dir=out, **SETTINGS)
    assert full.layers == [0, 1, 2, 3]
    assert {p: p.stat().st_mtime_ns for p in (out / "layer_003").iterdir()} == stamps
    assert {k: v for k, v in cache_files(out).items() if k.startswith("layer_003/")} == last_layer
    with pytest.raises(KeyError, match="finished layers: 3"):
        first.embeddings(0)  # an old handle reads its own manifest


def test_resume_false_refuses_a_started_cache_and_foreign_directories_are_refused(models, tmp_path):
    out = tmp_path / "c"
    fastmi.extract(models["gpt2"], SENTENCES, layers="0", cache_dir=out, **SETTINGS)
    with pytest.raises(ValueError, match="already holds finished units"):
        fastmi.extract(models["gpt2"], SENTENCES, layers="0", cache_dir=out, resume=False, **SETTINGS)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no fastmi cache"):
        fastmi.extract(models["gpt2"], SENTENCES, cache_dir=foreign, **SETTINGS)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(FileNotFoundError, match="no fastmi activation cache"):
        ActivationCache.open(tmp_path / "nothing")


def test_second_writer_is_locked_out(tmp_path):
    meta = {
        "model": "m",
        "revision": "r",
        "dtype": "float32",
        "pooling": "mean",
        "max_length": 8,
        "corpus_fingerprint": "f",
        "num_rows": 3,
        "hidden_size": 2,
    }
    with CacheWriter.prepare(tmp_path / "c", meta, shard_rows=2):
        with pytest.raises(RuntimeError, match="another process is extracting"):
            CacheWriter.prepare(tmp_path / "c", meta, shard_rows=2)
    CacheWriter.prepare(tmp_path / "c", meta, shard_rows=2).close()  # released on exit


def test_default_cache_dir_lives_under_fastmi_home_and_depends_on_identity(models, tmp_path):
    cache = fastmi.extract(models["gpt2"], SENTENCES, layers="last", **SETTINGS)
    home = tmp_path / "home" / "activations"
    assert cache.directory.parent == home and cache.directory.name.startswith("gpt2-")
    assert cache.directory == default_cache_dir(cache.metadata, models["gpt2"])
    other = dict(cache.metadata, pooling="max")
    assert default_cache_dir(other, models["gpt2"]) != cache.directory
    assert os.path.isfile(cache.directory / "manifest.json")
