"""The command line as a new user meets it: arguments refused before any work, nothing left behind
by a failed run, the sweep's options, results kept per setting, report's input, plain notices."""

from __future__ import annotations

import json

import pytest
from tiny import make_tiny_model, random_sentences

import fastmi
import fastmi.probe.recoverability
from fastmi.cli import build_parser, main
from fastmi.results.result import RecoverabilityResult

FAST = ["--max-epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_ux")
    model = make_tiny_model("bert", root / "bert", layers=2)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(40, seed=9)) + "\n")
    return str(model), corpus


@pytest.fixture
def nothing_may_load(monkeypatch):
    """Loading weights or extracting is a failure of the test: arguments must be refused first."""
    import transformers

    import fastmi.activations.extraction

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", forbidden)
    monkeypatch.setattr(fastmi.activations.extraction, "extract", forbidden)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"fastmi {fastmi.__version__}"


@pytest.mark.parametrize(
    "bad, says",
    [
        (["--vocab", "topp:12"], "vocab must be"),
        (["--vocab", "top:1"], "vocab must be"),
        (["--layers", "99"], "out of range"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--max-length", "0"], "--max-length must be a positive integer"),
        (["--shard-rows", "0"], "--shard-rows must be a positive integer"),
        (["--test-fraction", "1.5"], "--test-fraction must lie strictly between 0 and 1"),
        (["--max-epochs", "0"], "--max-epochs must be a positive integer"),
        (["--device", "cuda:7"], "--device"),
        (["--tie-unseen", "--probe", "unembedding"], "--tie-unseen applies to the linear probe only"),
    ],
)
def test_sweep_refuses_bad_arguments_before_any_work_and_leaves_nothing(
    bad, says, tiny, nothing_may_load, tmp_path, capsys
):
    model, corpus = tiny
    out = tmp_path / "out"
    assert main(["sweep", "--model", model, "--corpus", str(corpus), "--out", str(out), *FAST, *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "bad, says",
    [(["--layers", "99"], "out of range"), (["--batch-size", "0"], "--batch-size must be a positive integer")],
)
def test_extract_refuses_layers_and_batch_size_before_the_model_loads(
    bad, says, tiny, nothing_may_load, tmp_path, capsys
):
    model, corpus = tiny
    out = tmp_path / "cache"
    assert main(["extract", "--model", model, "--corpus", str(corpus), "--out", str(out), "--no-progress", *bad]) == 2
    assert says in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    "spec, says", [("./no-such-model", "model path not found"), ("minilmm", "did you mean 'minilm'?")]
)
def test_finetune_names_a_missing_model_in_one_line(spec, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "tuned"
    assert main(["finetune", "--model", spec, "--corpus", "demo", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and not out.exists()


def test_demo_refuses_a_bad_vocab_before_extraction(nothing_may_load, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--vocab", "everything", "--no-progress"]) == 2
    assert "vocab must be" in capsys.readouterr().err and not out.exists()


def test_a_failed_probe_leaves_no_split_and_no_output_directory(tiny, tmp_path, monkeypatch, capsys):
    model, corpus = tiny
    cache = fastmi.extract(model, fastmi.Corpus.from_text_file(corpus), cache_dir=tmp_path / "cache", progress=False)
    out = tmp_path / "probe"
    assert main(["probe", "--cache", str(cache.directory), "--out", str(out), "--vocab", "nope", *FAST]) == 2
    assert not out.exists()

    def fails(*args, **kwargs):
        raise ValueError("the probe failed")

    monkeypatch.setattr(fastmi.probe.recoverability, "recoverability", fails)
    assert main(["probe", "--cache", str(cache.directory), "--out", str(out), *FAST]) == 2
    assert "the probe failed" in capsys.readouterr().err
    assert not out.exists()


def test_a_sweep_failing_mid_run_writes_no_split_and_no_results(tiny, tmp_path, monkeypatch):
    model, corpus = tiny

    def fails(*args, **kwargs):
        raise ValueError("the probe failed")

    monkeypatch.setattr(fastmi.probe.recoverability, "recoverability", fails)
    out = tmp_path / "out"
    assert main(["sweep", "--model", model, "--corpus", str(corpus), "--out", str(out), *FAST]) == 2
    # The activation cache is a checkpoint and stays, to be resumed; nothing else was written.
    assert sorted(p.name for p in out.iterdir()) == ["cache"]


def test_every_command_has_the_same_device_default():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in ("demo", "extract", "probe", "sweep"):
        action = next(a for a in commands[name]._actions if "--device" in a.option_strings)
        assert action.default is None and "cuda if available, else cpu" in action.help, name


def test_sweep_field_shard_rows_revision_trust_remote_code(tiny, tmp_path):
    model, _ = tiny
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"body": s}) + "\n" for s in random_sentences(30, seed=1)))
    out = tmp_path / "out"
    assert (
        main(
            [
                "sweep",
                "--model",
                model,
                "--corpus",
                str(corpus),
                "--field",
                "body",
                "--shard-rows",
                "7",
                "--revision",
                "main",
                "--trust-remote-code",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    cache = fastmi.ActivationCache.open(out / "cache" / "bert")
    assert cache.shard_rows == 7 and cache.num_rows == 30 and cache.metadata["corpus_name"] == "corpus.jsonl"


def test_a_rerun_with_another_vocab_keeps_the_earlier_results(tiny, tmp_path, capsys):
    model, corpus = tiny
    out = tmp_path / "out"
    base = ["sweep", "--model", model, "--corpus", str(corpus), "--out", str(out), *FAST]
    assert main([*base, "--vocab", "observed"]) == 0
    [first] = list((out / "models" / "bert").glob("*.json"))
    kept = first.read_bytes()
    assert main([*base, "--vocab", "top:8"]) == 0
    files = sorted((out / "models" / "bert").glob("*.json"))
    assert len(files) == 2 and first in files and first.read_bytes() == kept
    assert first.name.startswith("vocab-observed-") and any(f.name.startswith("vocab-top8-") for f in files)
    assert {r["vocab"] for r in RecoverabilityResult.from_json(out / "results.json").table} == {"top:8"}
    capsys.readouterr()
    assert main([*base, "--vocab", "observed"]) == 0  # the earlier setting again: reused, not recomputed
    assert "reusing the finished results in" in capsys.readouterr().err
    assert first.read_bytes() == kept

    # report reads a run directory (positional, --from, or the old --out) or one setting's file
    for argv in (
        ["report", str(out)],
        ["report", "--from", str(out)],
        ["report", "--out", str(out)],
        ["report", str(first), "--plot", str(tmp_path / "first.png")],
    ):
        assert main(argv) == 0, argv
    assert "observed" in json.dumps(RecoverabilityResult.from_json(first).table)
    assert (tmp_path / "first.png").stat().st_size > 1000
    assert main(["report"]) == 2 and "name the run to report" in capsys.readouterr().err


def test_truncation_resume_and_complete_are_one_plain_line_each(tiny, tmp_path, capsys):
    model, corpus = tiny
    out = tmp_path / "cache"
    argv = [
        "extract",
        "--model",
        model,
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--max-length",
        "6",
        "--no-progress",
    ]
    loaded = fastmi.load_model(model, progress=False)
    sentences = fastmi.Corpus.from_text_file(corpus).sentences
    expected = sum(len(loaded.tokenizer(s)["input_ids"]) > 6 for s in sentences)
    assert 0 < expected < len(sentences)

    assert main([*argv, "--layers", "0"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        f"fastmi: {loaded.name}: {expected} of {len(sentences)} sentences are longer than "
        "max_length=6 tokens and were truncated to it"
    ]
    assert fastmi.ActivationCache.open(out).metadata["truncated_rows"] == expected

    assert main(argv) == 0  # layers 1-2 still to do
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 2 and err[0].startswith(f"fastmi: resuming the activation cache at {out}: 1 of 3")
    assert main(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"fastmi: the activation cache at {out} is already complete; nothing to extract"]
    assert "Warning" not in "".join(err)


def test_tie_unseen_is_a_setting_of_its_own_with_the_same_bounds(tiny, tmp_path):
    """--tie-unseen trains the full softmax's unseen ids as one row: the same problem, so the same
    bounds; the setting is recorded and kept in its own results file."""
    model, corpus = tiny
    out = tmp_path / "out"
    # The linear probe, which --tie-unseen applies to ("auto" trains the embedding probe on this cache).
    base = ["sweep", "--model", model, "--corpus", str(corpus), "--out", str(out)]
    base += ["--vocab", "full", "--probe", "linear", *FAST]
    assert main(base) == 0
    untied = RecoverabilityResult.from_json(out / "results.json")
    assert main([*base, "--tie-unseen"]) == 0
    tied = RecoverabilityResult.from_json(out / "results.json")
    assert tied.config["train"]["tie_unseen"] is True and untied.config["train"]["tie_unseen"] is None
    assert len(list((out / "models" / "bert").glob("vocab-full-*.json"))) == 2
    for a, b in zip(untied.table, tied.table, strict=True):
        assert a["layer"] == b["layer"]
        assert b["ce_bits"] == pytest.approx(a["ce_bits"], abs=1e-3)


# ---- output folders: refused in one line, before any work ---------------------------------------


def _command_writing_to(command: str, out, model: str, corpus) -> list[str]:
    """The command line of ``command`` with --out ``out`` (probe's cache need not exist: the output
    folder is checked before the cache is opened)."""
    arguments = {
        "probe": ["--cache", str(out.parent / "no-cache")],
        "sweep": ["--model", model, "--corpus", str(corpus), "--max-epochs", "1"],
        "extract": ["--model", model, "--corpus", str(corpus)],
        "demo": ["--max-epochs", "1"],
    }[command]
    return [command, *arguments, "--out", str(out), "--no-progress"]


def _an_output_folder_that_cannot_be(kind: str, tmp_path, monkeypatch):
    """An --out no process could write to.  Tests run as root, for whom chmod 0o500 changes nothing,
    so a folder under a regular file stands for what the file system refuses, and os.access is made
    to deny the parent folder for what permissions refuse."""
    import os

    regular = tmp_path / "notes.txt"
    regular.write_text("not a folder\n")
    if kind == "a file":
        return regular, "is a file, not a directory"
    if kind == "under a file":
        return regular / "results", "notes.txt is a file, not a directory"
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: str(path) != str(locked) and real_access(path, mode))
    return locked / "results", f"no permission to create folders in {locked}"


@pytest.mark.parametrize("kind", ["a file", "under a file", "unwritable"])
@pytest.mark.parametrize("command", ["probe", "sweep", "extract", "demo"])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_work(
    command, kind, tiny, nothing_may_load, tmp_path, monkeypatch, capsys
):
    model, corpus = tiny
    monkeypatch.setattr(fastmi.probe.recoverability, "recoverability", lambda *a, **k: pytest.fail("the probe ran"))
    out, problem = _an_output_folder_that_cannot_be(kind, tmp_path, monkeypatch)
    assert main(_command_writing_to(command, out, model, corpus)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastmi {command}: error: --out {out}"), err
    assert problem in err[0] and "Traceback" not in captured.err


def test_extract_refuses_a_folder_of_other_files_before_the_model_loads(tiny, nothing_may_load, tmp_path, capsys):
    model, corpus = tiny
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    assert main(["extract", "--model", model, "--corpus", str(corpus), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty and holds no fastmi cache" in err[0] and "--overwrite" in err[0]


def test_an_os_error_that_slips_past_the_checks_is_still_one_line(monkeypatch, tmp_path, capsys):
    import fastmi.commands.report

    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "results.png"))

    monkeypatch.setattr(fastmi.commands.report, "run", denied)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"fastmi report: error: permission denied: {tmp_path / 'results.png'}"


# ---- --layers: only the requested layers are probed ---------------------------------------------


def test_sweep_layers_probes_only_those_of_a_cache_holding_every_layer(tiny, tmp_path, capsys):
    model, corpus = tiny
    out = tmp_path / "out"
    base = ["sweep", "--model", model, "--corpus", str(corpus), "--out", str(out), *FAST]
    assert main(base) == 0  # the cache now holds layers 0, 1 and 2
    every = sorted((out / "models").glob("*/*.json"))
    assert [r["layer"] for r in RecoverabilityResult.from_json(out / "results.json").table] == [0, 1, 2]
    capsys.readouterr()

    assert main([*base, "--layers", "0,2"]) == 0
    assert "is complete; not loading the model" in capsys.readouterr().err
    assert [r["layer"] for r in RecoverabilityResult.from_json(out / "results.json").table] == [0, 2]
    # The results of every layer are kept beside those of the subset, not overwritten by them.
    assert [r["layer"] for r in RecoverabilityResult.from_json(every[0]).table] == [0, 1, 2]
    assert len(sorted((out / "models").glob("*/*.json"))) == 2

    assert main(base) == 0  # every layer again: the first results are reused, not retrained
    assert "reusing the finished results" in capsys.readouterr().err
    assert [r["layer"] for r in RecoverabilityResult.from_json(out / "results.json").table] == [0, 1, 2]


def test_probe_layers_probes_only_those_and_refuses_one_the_cache_lacks(tiny, tmp_path, capsys):
    model, corpus = tiny
    cache = fastmi.extract(model, fastmi.Corpus.from_text_file(corpus), cache_dir=tmp_path / "cache", progress=False)
    out = tmp_path / "probe"
    base = ["probe", "--cache", str(cache.directory), "--out", str(out), *FAST]
    assert main([*base, "--layers", "last"]) == 0
    assert [r["layer"] for r in RecoverabilityResult.from_json(out / "results.json").table] == [2]
    partial = fastmi.extract(
        model, fastmi.Corpus.from_text_file(corpus), cache_dir=tmp_path / "partial", layers="0", progress=False
    )
    capsys.readouterr()
    assert (
        main(["probe", "--cache", str(partial.directory), "--out", str(tmp_path / "p2"), *FAST, "--layers", "1"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds layers 0, not 1" in err[0]
    assert main(["probe", "--cache", str(partial.directory), "--out", str(tmp_path / "p2"), *FAST]) == 0  # all it holds


def test_an_existing_output_folder_without_write_permission_is_named(tmp_path, monkeypatch):
    """Permissions through os.access (root may write anywhere): the folder itself, given relatively."""
    import os

    from fastmi.runtime.preflight import check_output_dir

    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: not str(path).endswith("results") and real_access(path, mode)
    )
    with pytest.raises(ValueError, match=f"--out results: no permission to write in {tmp_path / 'results'}"):
        check_output_dir("results")
    check_output_dir("elsewhere")  # a folder still to be made in a writable one is fine, and is not made
    assert not (tmp_path / "elsewhere").exists()
