"""The third claim's three-way split (tune / evaluation probes / held out) and its use by `fastmi finetune`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastmi.finetune.split import claim_split, evaluation_split
from tests.tiny import make_tiny_model, random_sentences


@pytest.mark.parametrize("num_rows,tune,probe", [(1000, 0.4, 0.3), (37, 0.5, 0.25), (3, 0.34, 0.33)])
def test_claim_split_parts_are_disjoint_cover_every_row_and_follow_the_seed(num_rows, tune, probe):
    parts = claim_split(num_rows, seed=7, tune_fraction=tune, probe_fraction=probe)
    a, b, c = parts
    assert not np.intersect1d(a, b).size and not np.intersect1d(a, c).size and not np.intersect1d(b, c).size
    assert np.array_equal(np.sort(np.concatenate([a, b, c])), np.arange(num_rows))
    assert a.size == round(tune * num_rows) and b.size == round(probe * num_rows) and c.size >= 1
    assert all(np.array_equal(np.sort(x), x) and x.dtype == np.int64 for x in parts)
    again = claim_split(num_rows, seed=7, tune_fraction=tune, probe_fraction=probe)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again))
    if num_rows > 10:
        other = claim_split(num_rows, seed=8, tune_fraction=tune, probe_fraction=probe)
        assert not np.array_equal(other.tune, parts.tune)


@pytest.mark.parametrize(
    "num_rows,tune,probe", [(10, 0.0, 0.3), (10, 0.5, 0.5), (10, 0.7, 1.2), (4, 0.1, 0.1), (2, 0.3, 0.3)]
)
def test_claim_split_refuses_an_empty_part(num_rows, tune, probe):
    with pytest.raises(ValueError):
        claim_split(num_rows, 0, tune, probe)


def test_evaluation_split_never_holds_a_tuning_sentence_and_a_sweep_accepts_it(tmp_path):
    from fastmi.probe.config import ProbeConfig
    from fastmi.sweep import load_or_make_split

    sentences = [f"sentence number {i}" for i in range(200)]
    parts = claim_split(200, seed=3, tune_fraction=0.4, probe_fraction=0.3)
    corpus, split, rows = evaluation_split(sentences, parts)
    assert set(corpus.sentences).isdisjoint(sentences[i] for i in parts.tune)
    assert np.array_equal(rows[split.test], parts.heldout)
    assert np.array_equal(np.sort(np.concatenate([rows[split.train], rows[split.validation]])), parts.probe)
    split.save(tmp_path / "split.json")
    settings = ProbeConfig(seed=parts.seed, test_fraction=split.test_fraction)
    assert load_or_make_split(tmp_path, len(corpus), corpus.fingerprint, settings) == split


def _finetune(model_dir, corpus, out, *extra):
    from fastmi.cli import main

    return main(
        ["finetune", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(out), "--steps", "2"]
        + ["--batch-size", "4", "--logging-steps", "1", "--save-steps", "1", "--no-progress", *extra]
    )


def test_fastmi_finetune_trains_on_the_tune_part_alone_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    model_dir = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(50, seed=1)))
    out = tmp_path / "tuned"
    extra = ["--tune-fraction", "0.5", "--probe-fraction", "0.2", "--split-seed", "4"]
    assert _finetune(model_dir, corpus, out, *extra) == 0
    done = json.loads((out / "finetune.json").read_text())
    parts = claim_split(50, 4, 0.5, 0.2)
    assert done["claim_split"]["sizes"] == {"tune": 25, "probe": 10, "heldout": 15}
    assert done["train_sentences"] == 25 and done["config"]["tune_fraction"] == 0.5
    saved = json.loads((out / "claim_split.json").read_text())
    assert saved["tune"] == parts.tune.tolist() and saved["heldout"] == parts.heldout.tolist()
    # Without the option: the sweep split's train rows, as before.
    assert _finetune(model_dir, corpus, tmp_path / "plain") == 0
    plain = json.loads((tmp_path / "plain" / "finetune.json").read_text())
    assert plain["claim_split"] is None and plain["train_sentences"] != 25
    assert done["config"]["max_grad_norm"] == 1.0
    unclipped = tmp_path / "unclipped"
    assert _finetune(model_dir, corpus, unclipped, "--max-grad-norm", "0") == 0
    args = json.loads(next((unclipped / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    log = [json.loads(line) for line in (unclipped / "log.jsonl").read_text().splitlines()]
    assert json.loads((unclipped / "finetune.json").read_text())["config"]["max_grad_norm"] == 0.0
    assert args["global_step"] == 2 and not any("recoverability_grad_norm" in entry for entry in log)
    clipped_log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("recoverability_grad_norm" in entry for entry in clipped_log)
    assert _finetune(model_dir, corpus, tmp_path / "bad", "--tune-fraction", "0.8", "--probe-fraction", "0.3") == 2
    assert _finetune(model_dir, corpus, tmp_path / "bad", "--max-grad-norm", "-1") == 2
    assert not (tmp_path / "bad").exists()


def test_an_interrupted_run_resumes_from_its_last_complete_checkpoint(tmp_path, monkeypatch):
    from fastmi.finetune.run import last_complete_checkpoint

    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    model_dir = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(30, seed=2)))
    out = tmp_path / "tuned"
    assert _finetune(model_dir, corpus, out) == 0
    assert json.loads((out / "finetune.json").read_text())["resumed_from_step"] is None
    # 'Interrupt' it: the finished marker gone, a checkpoint half written after the last complete one.
    (out / "finetune.json").unlink()
    checkpoints = out / "checkpoints"
    complete = last_complete_checkpoint(checkpoints)
    assert complete is not None and complete.endswith("checkpoint-2")
    (checkpoints / "checkpoint-9").mkdir()
    (checkpoints / "checkpoint-9" / "model.safetensors").write_bytes(b"half")
    assert last_complete_checkpoint(checkpoints) == complete and not (checkpoints / "checkpoint-9").exists()
    (checkpoints / "checkpoint-9").mkdir()  # the run itself skips it too
    assert _finetune(model_dir, corpus, out) == 0
    done = json.loads((out / "finetune.json").read_text())
    assert done["config"]["steps"] == 2 and done["resumed_from_step"] == 2  # its runtime counts this sitting only
    # An unfinished run is not resumed with other settings.
    (out / "finetune.json").unlink()
    assert _finetune(model_dir, corpus, out, "--lambda", "0.7") == 2


def test_the_claim_bench_evaluates_on_the_probe_and_heldout_parts_alone(tmp_path):
    """bench/finetune_claim.py reads the runs' three-way split: its sweep and topic probes never see
    a tuning sentence, and its held-out rows are the held-out part."""
    from bench_scripts import bench_script

    from fastmi.data.corpus import Corpus

    demo = Corpus.load("demo", max_sentences=200)
    parts = claim_split(200, 5, 0.4, 0.3)
    record = {"seed": 5, "tune_fraction": 0.4, "probe_fraction": 0.3, "num_rows": 200, "corpus": demo.fingerprint}
    (tmp_path / "finetune.json").write_text(json.dumps({"claim_split": record}))
    corpus, split, rows = bench_script("finetune_claim").evaluation_data(str(tmp_path), 200)
    assert set(corpus.sentences).isdisjoint(demo.sentences[i] for i in parts.tune)
    assert np.array_equal(rows[split.test], parts.heldout) and len(corpus) == 200 - parts.tune.size
    (tmp_path / "finetune.json").write_text(json.dumps({"claim_split": None}))
    corpus, split, rows = bench_script("finetune_claim").evaluation_data(str(tmp_path), 200)
    assert split is None and len(corpus) == 200  # runs without the three-way split: as before
    (tmp_path / "finetune.json").write_text(json.dumps({"claim_split": {**record, "corpus": "other"}}))
    with pytest.raises(ValueError, match="another corpus"):
        bench_script("finetune_claim").evaluation_data(str(tmp_path), 200)
