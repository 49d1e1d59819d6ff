"""The term probe's memorisation gap (fastmi/finetune/term_probe_gap.py) and the passes a run records:
a run that passes over its tune part many times leaves a probe that knows the tune bags better than
held-out ones, and says so when it starts; one pass is silent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastmi.finetune.run import FinetuneConfig, finetune
from fastmi.finetune.term_probe_gap import term_probe_gap
from tests.tiny import make_tiny_model, random_sentences


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(random_sentences(100, seed=3, min_words=4, max_words=12)))
    return path


def _run(tmp_path, corpus, name, steps, probe_lr):
    model = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    config = FinetuneConfig(
        model=str(model),
        out=str(tmp_path / name),
        corpus=str(corpus),
        layers="1",
        lam=1.0,
        steps=steps,
        batch_size=8,
        probe_lr=probe_lr,
        lora=False,
        lr=1e-3,
        save_steps=1000,
        logging_steps=1000,
        progress=False,
        tune_fraction=0.4,
    )
    return finetune(config), tmp_path / name


def test_many_passes_are_announced_recorded_and_leave_a_probe_that_knows_the_tune_bags(
    tmp_path, corpus, monkeypatch, capsys
):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    done, out = _run(tmp_path, corpus, "many", steps=150, probe_lr=0.05)
    assert done["train_sentences"] == 40 and done["passes"] == pytest.approx(150 * 8 / 40)
    assert "pass over the 40 training sentences 30.00 times" in capsys.readouterr().err
    gap = term_probe_gap(out, max_sentences=1000)
    layer = gap["layers"]["1"]
    assert gap["passes"] == pytest.approx(30.0) and layer["sentences"] == [40, 30]
    assert np.isfinite([layer["tune_ce_bits"], layer["heldout_ce_bits"]]).all()
    assert layer["gap_bits"] == pytest.approx(layer["heldout_ce_bits"] - layer["tune_ce_bits"])
    assert layer["gap_bits"] > 2 * layer["gap_se_bits"] > 0


def test_one_pass_is_not_announced(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    done, out = _run(tmp_path, corpus, "once", steps=5, probe_lr=1e-3)
    assert done["passes"] == pytest.approx(1.0)
    assert "training sentences" not in capsys.readouterr().err
    assert json.loads((out / "finetune.json").read_text())["passes"] == pytest.approx(1.0)
