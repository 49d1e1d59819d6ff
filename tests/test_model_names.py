"""Model names: short and stable in tables, plots and compare, and compare takes what --model took.

A folder is named by its folder name and a GGUF file by its file name without .gguf, never by its
full path; two that share a name keep as many parent folders as tell them apart.  ``fastmi compare``
accepts the alias, the hub id, the relative or absolute path the user passed, or the short name.
"""

from __future__ import annotations

import json

import pytest
from tiny import make_tiny_model, random_sentences

from fastmi.cli import main
from fastmi.models.loading import short_model_name
from fastmi.results.result import RecoverabilityResult
from fastmi.sweep import model_names, renamed

FAST = ["--max-epochs", "1", "--no-progress"]
COMPARE = ["--bound", "variational", "--bootstrap", "200"]


def test_short_names_of_aliases_hub_ids_folders_and_gguf_files(tmp_path):
    folder = tmp_path / "runs" / "my-model"
    folder.mkdir(parents=True)
    assert short_model_name("minilm") == "minilm"
    assert short_model_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert short_model_name("gpt2") == "gpt2"
    assert short_model_name(folder) == short_model_name(f"{folder}/") == "my-model"
    assert short_model_name("/models/elsewhere/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"


def test_clashing_names_keep_the_parent_folders_that_tell_them_apart(tmp_path):
    for parent in ("a", "b"):
        (tmp_path / "x" / parent / "model").mkdir(parents=True)
    (tmp_path / "minilm").mkdir()
    specs = [
        str(tmp_path / "x" / "a" / "model"),
        str(tmp_path / "x" / "b" / "model"),
        "minilm",
        str(tmp_path / "minilm"),
    ]
    names = model_names(specs)
    assert names[:3] == ["a/model", "b/model", "minilm"] and names[3].endswith("/minilm") and names[3] != "minilm"
    assert model_names(specs) == names  # stable: a rerun names them the same


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep of two BERT folders both called 'model' and a GGUF file, given as relative paths."""
    pytest.importorskip("gguf", reason="writing a GGUF file needs the gguf package (pip install gguf)")
    from test_models import write_tiny_llama_gguf

    root = tmp_path_factory.mktemp("names")
    make_tiny_model("bert", root / "a" / "model", layers=2, seed=1)
    make_tiny_model("bert", root / "b" / "model", layers=2, seed=2)
    (root / "ggufs").mkdir()
    write_tiny_llama_gguf(root / "ggufs" / "tiny.F32.gguf")
    (root / "corpus.txt").write_text("\n".join(random_sentences(40, seed=4)) + "\n")
    specs = ["a/model", "b/model", "ggufs/tiny.F32.gguf"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        argv = ["sweep", *(w for s in specs for w in ("--model", s)), "--corpus", "corpus.txt", "--out", "out", *FAST]
        assert main(argv) == 0
    return root, argv


def test_tables_files_and_plots_name_models_shortly(swept, capsys):
    root, _ = swept
    result = RecoverabilityResult.from_json(root / "out" / "results.json")
    assert result.models == ["a/model", "b/model", "tiny.F32"]
    assert str(root) not in (root / "out" / "results.csv").read_text()
    assert str(root) not in result.format_table()
    assert sorted(p.name for p in (root / "out" / "models").iterdir()) == ["a--model", "b--model", "tiny.F32.gguf"]
    from fastmi.results.plot import bounds_figure

    legend = [t.get_text() for t in bounds_figure(result).legends[0].get_texts()]
    assert any(t.startswith("tiny.F32 (") for t in legend) and not any(str(root) in t for t in legend)


@pytest.mark.parametrize(
    "given",
    ["tiny.F32", "ggufs/tiny.F32.gguf", "ABSOLUTE", "../ggufs/tiny.F32.gguf", "tiny.F32.gguf", "tiny.F32:last"],
)
def test_compare_takes_what_was_passed_to_model(given, swept, monkeypatch, capsys):
    root, _ = swept
    monkeypatch.chdir(root / "b" if given.startswith("..") else root)
    given = given.replace("ABSOLUTE", str(root / "ggufs" / "tiny.F32.gguf"))
    b = "b/model:last" if given.endswith(":last") else "b/model"
    assert main(["compare", "--out", str(root / "out"), given, b, *COMPARE]) == 0, capsys.readouterr().err
    assert "tiny.F32:" in capsys.readouterr().out


def test_compare_refuses_a_name_two_models_share(swept, capsys):
    root, _ = swept
    assert main(["compare", "--out", str(root / "out"), "model", "tiny.F32", *COMPARE]) == 2
    err = capsys.readouterr().err
    assert "could be any of the models ['a/model', 'b/model']" in err


def test_results_stored_under_full_paths_read_with_short_names(swept, monkeypatch, capsys):
    """A sweep made before names were short stored each model under its absolute path: a rerun reuses
    those results under the short names, and compare on the old results.json takes a relative path."""
    root, argv = swept
    gguf = str((root / "ggufs" / "tiny.F32.gguf").resolve())
    for stored in (root / "out" / "models" / "tiny.F32.gguf").glob("*.json"):
        renamed(RecoverabilityResult.from_json(stored), gguf).to_json(stored)
    old = RecoverabilityResult.from_json(root / "out" / "results.json")
    parts = [renamed(old.for_model(m), gguf) if m == "tiny.F32" else old.for_model(m) for m in old.models]
    legacy = root / "legacy"
    legacy.mkdir()
    RecoverabilityResult.concat(parts).to_json(legacy / "results.json")
    monkeypatch.chdir(root)
    assert main(["compare", "--out", "legacy", "ggufs/tiny.F32.gguf", "a/model", *COMPARE]) == 0
    assert f"{gguf}:" in capsys.readouterr().out

    assert main(argv) == 0
    assert "tiny.F32: reusing the finished results" in capsys.readouterr().err
    assert RecoverabilityResult.from_json(root / "out" / "results.json").models == ["a/model", "b/model", "tiny.F32"]
    assert gguf not in json.dumps(json.loads((root / "out" / "results.json").read_text())["rows"])
