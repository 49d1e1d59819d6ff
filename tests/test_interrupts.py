"""Ctrl-C and a full disk: one line on stderr saying what was kept and how to resume, the cache
left consistent, and a rerun that finishes with the bytes of an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from tiny import make_tiny_model, random_sentences

import fastmi
import fastmi.runtime.files
from fastmi.activations.cache import ActivationCache
from fastmi.cli import main

SENTENCES = random_sentences(12, seed=7)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_tiny_model("llama", tmp_path_factory.mktemp("interrupts") / "llama", layers=2))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


@pytest.fixture
def reference(model, corpus, tmp_path):
    """Shard bytes of an uninterrupted run."""
    cache = fastmi.extract(
        model,
        fastmi.Corpus.from_text_file(corpus),
        cache_dir=tmp_path / "reference",
        shard_rows=2,
        batch_size=2,
        progress=False,
    )
    return shard_bytes(cache.directory)


def shard_bytes(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.safetensors"))}


def argv(model, corpus, out) -> list[str]:
    return [
        "extract",
        "--model",
        model,
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--shard-rows",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]


# The CLI in a child process that stalls once the first shard is listed in the manifest (the first
# manifest write that lists three units: shard 0 of layers 0-2), so the parent can press
# Ctrl-C (SIGINT) while some shards are finished and others are not, however loaded the machine.
SLOW_CLI = textwrap.dedent("""
    import json, signal, sys, time
    import fastmi.activations.cache as cache
    from fastmi.cli import main
    # Ctrl-C as a terminal delivers it: a test run started in the background (cmd &) hands its
    # children an ignored SIGINT, which Python would keep.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real_commit = cache.CacheWriter._commit_units

    def stalling_commit(self, finished):
        real_commit(self, finished)
        if sum(map(len, json.loads((self.directory / "manifest.json").read_text())["units"].values())) >= 3:
            time.sleep(300)  # the parent's SIGINT ends this

    cache.CacheWriter._commit_units = stalling_commit
    sys.exit(main(sys.argv[1:]))
""")


def test_ctrl_c_prints_one_line_exits_130_and_a_rerun_resumes_to_identical_bytes(model, corpus, reference, tmp_path):
    out = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *argv(model, corpus, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        try:
            units = json.loads((out / "manifest.json").read_text())["units"]
        except (OSError, ValueError):
            units = {}
        if sum(len(shards) for shards in units.values()) >= 3:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be interrupted"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "interrupted" in lines[0] and "Kept" in lines[0] and str(out) in lines[0]
    assert "Run the same command again to resume" in lines[0]

    cache = ActivationCache.open(out)
    assert cache.verify() == [] and len(list(cache.units())) == 3  # shard 0 of layers 0-2
    assert "Kept 3 of 18 (layer, shard) units" in lines[0]
    assert not list(out.rglob(".tmp-*"))
    assert main(argv(model, corpus, out)) == 0
    assert shard_bytes(out) == reference


def test_a_full_disk_prints_one_line_naming_the_directory_and_the_space_needed(
    model, corpus, reference, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "cache"
    opened = []

    class FullDisk:
        """A file that takes half of what is written, then reports a full disk."""

        def __init__(self, path, mode):
            self.file = open(path, mode)

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def filling_open(path, mode="r", *args, **kwargs):
        if mode == "wb":
            opened.append(path)
            if "shard_00001" in str(path):  # shard 0 of every layer is finished and listed
                return FullDisk(path, mode)
        return open(path, mode, *args, **kwargs)

    # Every atomic write (the cache's among them) opens its temporary file in fastmi.runtime.files.
    monkeypatch.setattr(fastmi.runtime.files, "open", filling_open, raising=False)
    assert main(argv(model, corpus, out)) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no space left" in err[0], err
    assert str(out) in err[0] and "free" in err[0] and "more is needed" in err[0]
    assert "run the same command again" in err[0]

    assert not list(out.rglob(".tmp-*")), "the partial file must not keep holding space"
    cache = ActivationCache.open(out)
    assert cache.verify() == [] and 0 < len(list(cache.units())) < 3 * 6
    monkeypatch.undo()
    assert main(argv(model, corpus, out)) == 0
    assert shard_bytes(out) == reference


def test_other_os_errors_are_not_mistaken_for_a_full_disk():
    from fastmi.runtime.interrupts import run_command

    def fail():
        raise OSError(errno.EACCES, "Permission denied", "/somewhere")

    with pytest.raises(PermissionError):
        run_command("extract", fail)
    assert os.path.exists(os.getcwd())
