"""The cache dtype (fp32 | bf16 | fp16): stored as asked, read back exactly, part of the identity."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from tiny import make_tiny_model, random_sentences

import fastmi
from fastmi.activations.cache import IDENTITY_KEYS, CacheWriter, default_cache_dir, resolve_cache_dtype
from fastmi.cli import main

SENTENCES = random_sentences(12, seed=8)
SETTINGS = dict(batch_size=4, shard_rows=5, progress=False)
TORCH = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(autouse=True)
def _fastmi_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_tiny_model("gpt2", tmp_path_factory.mktemp("dtype_model") / "gpt2", hidden=16, layers=2))


@pytest.fixture(scope="module")
def fp32_cache(model, tmp_path_factory):
    return fastmi.extract(model, SENTENCES, cache_dir=tmp_path_factory.mktemp("fp32") / "c", **SETTINGS)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_caches_hold_the_rounded_fp32_values(model, fp32_cache, tmp_path, dtype):
    cache = fastmi.extract(model, SENTENCES, cache_dir=tmp_path / dtype, cache_dtype=dtype, **SETTINGS)
    assert cache.cache_dtype == resolve_cache_dtype(dtype) == cache.metadata["cache_dtype"]
    for layer in cache.layers:
        exact = fp32_cache.embeddings(layer)
        got = cache.embeddings(layer)
        assert got.dtype == torch.float32
        assert torch.equal(got, exact.to(TORCH[dtype]).float())  # round to nearest, widened exactly
        assert not torch.equal(got, exact)
    # Half the bytes of embeddings on disk, and the header says what it holds.
    shard = "layer_001/shard_00000.safetensors"
    assert (tmp_path / dtype / shard).stat().st_size < (fp32_cache.directory / shard).stat().st_size
    header_len = int.from_bytes((tmp_path / dtype / shard).read_bytes()[:8], "little")
    header = json.loads((tmp_path / dtype / shard).read_bytes()[8 : 8 + header_len])
    assert header["embeddings"]["dtype"] == {"bf16": "BF16", "fp16": "F16"}[dtype]
    assert json.loads(header["__metadata__"]["fastmi"])["cache_dtype"] == resolve_cache_dtype(dtype)
    assert cache.verify() == []


def test_another_cache_dtype_is_refused_by_name(model, fp32_cache):
    with pytest.raises(ValueError, match="cache_dtype: cache has 'float32', this run 'bfloat16'"):
        fastmi.extract(model, SENTENCES, cache_dir=fp32_cache.directory, cache_dtype="bf16", **SETTINGS)
    with pytest.raises(ValueError, match="cache dtype must be one of fp32, bf16, fp16"):
        fastmi.extract(model, SENTENCES, cache_dir=fp32_cache.directory, cache_dtype="int8", **SETTINGS)


def test_default_directories_differ_by_cache_dtype_and_fp32_keeps_its_old_name(fp32_cache):
    identity = fp32_cache.identity
    assert "cache_dtype" in IDENTITY_KEYS and identity["cache_dtype"] == "float32"
    old_rule = {k: identity[k] for k in IDENTITY_KEYS if k != "cache_dtype"}
    old_digest = hashlib.sha256(json.dumps(old_rule, sort_keys=True).encode()).hexdigest()[:12]
    assert default_cache_dir(identity, "m").name == f"m-{old_digest}"
    assert default_cache_dir(identity | {"cache_dtype": "bfloat16"}, "m") != default_cache_dir(identity, "m")


def test_values_beyond_fp16_are_refused_and_nothing_is_listed(fp32_cache, tmp_path):
    metadata = fp32_cache.metadata | {"cache_dtype": "float16"}
    with CacheWriter.prepare(tmp_path / "c", metadata, shard_rows=5) as writer:
        rows = writer.shard_range(0)[1]
        values = np.random.default_rng(0).standard_normal((rows, writer.hidden_size)).astype(np.float32)
        values[1, 2] = 1e6
        with pytest.raises(ValueError, match="exceed the range of float16"):
            writer.write_shard(0, {1: values})
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["units"] == {}


def test_cli_cache_dtype(model, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    assert (
        main(
            [
                "extract",
                "--model",
                model,
                "--corpus",
                str(corpus),
                "--out",
                str(tmp_path / "c"),
                "--cache-dtype",
                "fp16",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "cache float16" in capsys.readouterr().out
    assert fastmi.ActivationCache.open(tmp_path / "c").cache_dtype == "float16"
