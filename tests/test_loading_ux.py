"""What a new user meets when loading a model: fast, useful errors for missing models, a frozen
model that says so, trainable=True, and progress bars that obey --no-progress."""

from __future__ import annotations

import shutil
import socket
import warnings

import pytest
import torch
from tiny import make_tiny_model, random_sentences

import fastmi
import fastmi.models.hub
from fastmi.finetune.frozen import FrozenHiddenStatesWarning
from fastmi.models.loading import ModelNotAvailableError, load_model, model_num_layers


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("loading") / "llama", layers=2)


@pytest.fixture
def online_but_no_hub(monkeypatch):
    """HF_HUB_OFFLINE unset, as for a user, and the hub out of reach; transformers must not be asked."""
    import transformers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(fastmi.models.hub, "hub_reachable", lambda timeout=3.0: False)
    real = transformers.AutoConfig.from_pretrained
    calls = []

    def watched(source, *args, **kwargs):
        calls.append(kwargs)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", watched)
    return calls


def test_an_uncached_hub_id_fails_at_once_naming_hf_download(online_but_no_hub, tmp_path):
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("fastmi-test/not-cached", model_cache_dir=tmp_path)
    message = str(err.value)
    assert "the hub cannot be reached" in message and "`hf download fastmi-test/not-cached`" in message
    assert "huggingface-cli" not in message
    assert online_but_no_hub == []  # no retries: transformers was never asked


def test_a_cached_hub_id_loads_offline_at_once_when_the_hub_is_away(online_but_no_hub, llama, tmp_path, monkeypatch):
    import huggingface_hub.constants

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--fastmi-test--cached"
    shutil.copytree(llama, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    m = load_model("fastmi-test/cached", model_cache_dir=tmp_path)
    assert (m.name, m.revision, m.num_layers) == ("fastmi-test/cached", commit, 2)
    assert online_but_no_hub and all(kwargs.get("local_files_only") for kwargs in online_but_no_hub)


def test_hub_reachable_tries_one_connection(monkeypatch):
    import huggingface_hub.constants

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert fastmi.models.hub.hub_reachable(timeout=2.0)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")  # closed now
    assert not fastmi.models.hub.hub_reachable(timeout=2.0)


def test_a_mistyped_relative_path_says_so_and_suggests_the_folder(llama, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(llama, runs / "mymodel")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("runs/mymodle", model_cache_dir=tmp_path / "models")
    message = str(err.value)
    assert f"no local directory {runs / 'mymodle'}" in message and "did you mean runs/mymodel?" in message
    with pytest.raises(ModelNotAvailableError, match="did you mean 'minilm'"):
        load_model("minilmm", model_cache_dir=tmp_path / "models")
    assert load_model("runs/mymodel", model_cache_dir=tmp_path / "models").num_layers == 2  # no ./ needed


def test_layers_are_known_from_the_config_alone(llama, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded to count the layers")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_weights)
    assert model_num_layers(llama) == 2


def test_load_model_is_frozen_by_default_and_trainable_on_request(llama, tmp_path):
    frozen = load_model(llama, model_cache_dir=tmp_path)
    assert not frozen.model.training and not any(p.requires_grad for p in frozen.model.parameters())
    trainable = load_model(llama, model_cache_dir=tmp_path, trainable=True)
    assert trainable.model.training and all(p.requires_grad for p in trainable.model.parameters())


def test_recoverability_loss_warns_when_a_frozen_model_would_train_the_probe_alone(llama, tmp_path):
    enc = None
    for trainable, warns in ((False, True), (True, False)):
        m = load_model(llama, model_cache_dir=tmp_path, trainable=trainable)
        enc = m.tokenizer(random_sentences(3, seed=2), padding=True, return_tensors="pt")
        hidden = m.model(**enc, output_hidden_states=True).hidden_states[1]
        loss_fn = fastmi.RecoverabilityLoss(m.hidden_size, m.vocab_size, exclude_ids=m.special_ids)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = loss_fn(hidden, enc["attention_mask"], enc["input_ids"])
        frozen_warnings = [w for w in caught if issubclass(w.category, FrozenHiddenStatesWarning)]
        assert bool(frozen_warnings) == warns
        if warns:
            assert "trainable=True" in str(frozen_warnings[0].message)
        loss.backward()
        grads = [p.grad for p in m.model.parameters() if p.grad is not None]
        assert bool(grads) == trainable  # the warning told the truth: only a trainable model gets gradients
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FrozenHiddenStatesWarning)  # evaluation under no_grad: no warning
        loss_fn(hidden.detach(), enc["attention_mask"], enc["input_ids"])


@pytest.mark.parametrize("progress", [True, False])
def test_no_transformers_loading_bar_and_none_at_all_without_progress(progress, llama, tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    load_model(llama, model_cache_dir=tmp_path, progress=progress)
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == before  # restored


def test_no_progress_silences_the_gguf_conversion_bar(tmp_path, capsys):
    pytest.importorskip("gguf", reason="writing a GGUF file needs the gguf package (pip install gguf)")
    from test_models import write_tiny_llama_gguf

    path = tmp_path / "tiny.F32.gguf"
    write_tiny_llama_gguf(path)
    capsys.readouterr()
    load_model(path, model_cache_dir=tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    load_model(path, model_cache_dir=tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    assert "de-quantizing" in err and "Loading weights" not in err
    assert model_num_layers(path) == 2


@pytest.fixture
def hub_must_not_be_asked(monkeypatch):
    """HF_HUB_OFFLINE unset, as for a user; any look at the hub or its cache fails the test."""
    import transformers

    def asked(*args, **kwargs):
        raise AssertionError("the hub was asked about a mistyped model")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(fastmi.models.hub, "hub_reachable", asked)
    monkeypatch.setattr(fastmi.models.hub, "is_cached", asked)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", asked)


@pytest.mark.parametrize(("typed", "meant"), [("minilmm", "minilm"), ("MiniLM", "minilm"), ("smolm2", "smollm2")])
def test_a_mistyped_alias_fails_at_once_leading_with_the_suggestion(
    typed, meant, hub_must_not_be_asked, tmp_path, capsys
):
    from fastmi.cli import main

    out = tmp_path / "out"
    assert main(["sweep", "--model", typed, "--corpus", "demo", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastmi sweep: error: did you mean {meant!r}?"), err
    assert not out.exists()


def test_a_mistyped_folder_under_a_local_folder_fails_without_the_hub(
    llama, hub_must_not_be_asked, tmp_path, monkeypatch
):
    shutil.copytree(llama, tmp_path / "runs" / "mymodel")
    monkeypatch.chdir(tmp_path)
    for typed in ("runs/mymodle", "./runs/mymodle"):
        with pytest.raises((ModelNotAvailableError, FileNotFoundError)) as err:
            model_num_layers(typed)
        assert str(err.value).startswith("did you mean runs/mymodel?"), typed


def test_a_hub_id_is_still_tried_even_when_close_to_an_alias(online_but_no_hub, tmp_path):
    """Only a name that cannot be a hub id counts as a typo: ORG/NAME and plain legacy ids ask the hub."""
    for hub_id in ("someone/minilmm", "gpt2"):
        with pytest.raises(ModelNotAvailableError, match="the hub cannot be reached"):
            model_num_layers(hub_id)
