"""fastmi sweep / probe / report on tiny random models: files, one shared split, reuse, errors."""

from __future__ import annotations

import json

import pytest

from fastmi.cli import main
from fastmi.data.split import Split
from fastmi.results.result import RecoverabilityResult

FAST = ["--max-epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    from tiny import make_tiny_model, random_sentences

    root = tmp_path_factory.mktemp("sweep")
    bert = make_tiny_model("bert", root / "bert", hidden=16, layers=2)
    llama = make_tiny_model("llama", root / "llama", hidden=16, layers=2)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(60, seed=2)) + "\n")
    out = root / "out"
    args = ["sweep", "--model", str(bert), "--model", str(llama), "--corpus", str(corpus), "--out", str(out), *FAST]
    assert main(args) == 0
    return root, out, args


def test_sweep_writes_results_for_every_model_on_one_split(swept, capsys):
    root, out, _ = swept
    for name in ("results.csv", "results.json", "results.png", "split.json"):
        assert (out / name).is_file(), name
    result = RecoverabilityResult.from_json(out / "results.json")
    assert len(result.models) == 2 and len(result) == 6  # two models x layers 0..2
    split = Split.load(out / "split.json")
    for model in result.models:
        config = result.model_config(model)
        assert config["split"] == split.to_dict()
    assert {row["n_test"] for row in result.table} == {split.test.size}
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("model,revision,layer")


def test_rerun_reuses_caches_and_results(swept, capsys):
    _, out, args = swept
    watched = sorted((out / "models").glob("*/*.json")) + sorted((out / "cache").glob("*/manifest.json"))
    before = {p: p.stat().st_mtime_ns for p in watched}
    assert len(before) == 4
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert "llama" in capsys.readouterr().out


def test_probe_command_on_the_sweep_split_gives_the_same_numbers(swept, tmp_path, capsys):
    root, out, _ = swept
    probe_out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "--cache",
                str(out / "cache" / "bert"),
                "--out",
                str(probe_out),
                "--split",
                str(out / "split.json"),
                *FAST,
            ]
        )
        == 0
    )
    mine = RecoverabilityResult.from_json(probe_out / "results.json").table
    swept_rows = [
        r for r in RecoverabilityResult.from_json(out / "results.json").table if r["model"] == mine[0]["model"]
    ]
    assert [r["ce_bits"] for r in mine] == pytest.approx([r["ce_bits"] for r in swept_rows])
    assert json.loads((probe_out / "split.json").read_text()) == json.loads((out / "split.json").read_text())


def test_report_prints_the_table_and_draws(swept, tmp_path, capsys):
    _, out, _ = swept
    plot = tmp_path / "bounds.png"
    assert main(["report", "--out", str(out), "--plot", str(plot), "--bound", "variational"]) == 0
    text = capsys.readouterr().out
    assert "variational_lcb" in text and text.count("\n") >= 8
    assert plot.stat().st_size > 1000


def test_clear_errors(swept, tmp_path, capsys):
    root, out, _ = swept
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    # The same output directory with another corpus (fewer sentences) is refused, not mixed.
    assert (
        main(
            [
                "sweep",
                "--model",
                str(root / "bert"),
                "--corpus",
                str(root / "corpus.txt"),
                "--max-sentences",
                "30",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 2
    )
    assert "another corpus" in capsys.readouterr().err


def test_curve_compare_and_claims_on_real_caches(swept, tmp_path, capsys):
    root, out, _ = swept
    # probe --curve on the sweep's own split: curves, a data_limited column, per-sentence scores.
    probe_out = tmp_path / "curve"
    assert (
        main(
            [
                "probe",
                "--cache",
                str(out / "cache" / "llama"),
                "--out",
                str(probe_out),
                "--split",
                str(out / "split.json"),
                "--curve",
                "0.5,1",
                *FAST,
            ]
        )
        == 0
    )
    assert "data_limited" in capsys.readouterr().out
    result = RecoverabilityResult.from_json(probe_out / "results.json")
    assert {p["fraction"] for p in result.curves} == {0.5, 1.0} and len(result.curves) == 2 * 3
    assert all(isinstance(r["data_limited"], bool) for r in result.table)
    # The sweep's result keeps both models' held-out scores: compare and claims work from the files.
    swept_result = RecoverabilityResult.from_json(out / "results.json")
    bert, llama = (
        (m for m in swept_result.models if m.endswith("bert")),
        (m for m in swept_result.models if m.endswith("llama")),
    )
    bert, llama = next(bert), next(llama)
    assert main(["compare", "--out", str(out), f"{llama}:peak", f"{llama}:last", "--bootstrap", "200"]) == 0
    assert "(peak)" in capsys.readouterr().out
    assert main(["compare", "--out", str(out), bert, llama, "--bootstrap", "200"]) == 0
    assert "matched by nearest relative depth" in capsys.readouterr().out
    assert main(["report", "--out", str(out), "--claims"]) == 0
    text = capsys.readouterr().out
    assert "encoder keeps more than decoder at each matched depth" in text and "decoder gains, then forgets" in text
    claims = json.loads((out / "claims.json").read_text())
    assert len(claims) == 3 and all(
        c["verdict"] in ("holds", "contradicted", "not resolved at this level") for c in claims
    )
