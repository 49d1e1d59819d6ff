"""``fastmi extract`` end to end on a tiny model, through the CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import make_tiny_model, random_sentences

from fastmi import cli
from fastmi.activations.cache import ActivationCache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fastmi_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))


@pytest.fixture
def model_dir(tmp_path):
    return str(make_tiny_model("llama", tmp_path / "llama"))


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["extract", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--corpus",
        "--out",
        "--pooling",
        "--layers",
        "--batch-size",
        "--max-length",
        "--device",
        "--dtype",
        "--resume",
        "--no-resume",
        "--overwrite",
        "--field",
    ):
        assert option in text
    assert "0 is the embedding output" in text and "smollm2" in text


def test_extract_jsonl_corpus_end_to_end_then_resume_then_refuse(model_dir, tmp_path, capsys):
    sentences = random_sentences(9, seed=4)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"body": s, "id": i}) + "\n" for i, s in enumerate(sentences)))
    out = tmp_path / "cache"
    argv = [
        "extract",
        "--model",
        model_dir,
        "--corpus",
        str(corpus),
        "--field",
        "body",
        "--out",
        str(out),
        "--layers",
        "0,2-3",
        "--pooling",
        "last",
        "--batch-size",
        "4",
        "--shard-rows",
        "5",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"cache: {out}"
    assert "llama" in printed[1] and "9 sentences" in printed[1] and "layers 0,2-3 (3)" in printed[1]

    cache = ActivationCache.open(out)
    assert cache.layers == [0, 2, 3] and cache.num_shards == 2
    assert cache.metadata["pooling"] == "last" and cache.metadata["corpus_name"] == "corpus.jsonl"
    for layer in cache.layers:
        values = cache.embeddings(layer)
        assert values.shape == (9, 16) and bool(torch.isfinite(values).all()) and values.abs().sum() > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("shard_*")}

    assert cli.main(argv) == 0  # everything is there: resumes, redoes nothing
    assert {p: p.stat().st_mtime_ns for p in out.rglob("shard_*")} == stamps

    assert cli.main([*argv, "--pooling", "mean"]) == 2
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("fastmi extract: error:")]
    assert len(errors) == 1 and "another pooling" in errors[0] and "--overwrite" in errors[0]
    assert cli.main([*argv, "--pooling", "mean", "--overwrite"]) == 0
    assert ActivationCache.open(out).metadata["pooling"] == "mean"


def test_bad_input_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "cache"
    assert (
        cli.main(["extract", "--model", model_dir, "--corpus", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    )
    assert "corpus file not found" in capsys.readouterr().err
    corpus = tmp_path / "c.txt"
    corpus.write_text("w1 w2\nw3\n")
    assert cli.main(["extract", "--model", model_dir, "--corpus", str(corpus), "--out", str(out), "--layers", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not out.exists()


def test_python_m_fastmi_exits_with_the_commands_code_and_all_its_output(tmp_path, model_dir):
    """`python -m fastmi` (what torchrun runs) leaves without the interpreter's teardown
    (fastmi.__main__.exit_now): its output is still flushed whole and its exit code kept."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    plan = ["plan", "--model", model_dir, "--sentences", "100", "--vocab", "full", "--gpus", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "fastmi", *plan, "--matmul-tflops", "0.01", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["sentences"] == 100
    missing = tmp_path / "no-such-model"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one sentence here\n")
    extract = ["extract", "--model", str(missing), "--corpus", str(corpus), "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "fastmi", *extract], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and f"fastmi extract: error: model path not found: {missing}" in proc.stderr
