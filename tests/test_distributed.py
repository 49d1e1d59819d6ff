"""Two CPU processes on gloo (launched by torchrun) give what one process gives.

Each test launches ``torchrun --standalone --nproc_per_node 2 -m fastmi ...`` on tiny random
models and compares with the same work done in this process: the cache files bit for bit, the
tables within 1e-6 bits.  One run has a rank SIGKILL itself half-way through writing a shard; a
single process then finishes the cache, and it is bit-identical too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny import make_tiny_model, random_sentences

import fastmi
from fastmi.cli import main
from fastmi.data.split import Split
from fastmi.probe.training import TrainConfig
from fastmi.results.result import RecoverabilityResult

ROWS, SHARD_ROWS, BATCH = 40, 8, 4  # 5 shards, each taken by the first rank free to take it
GROUP_MEMORY = "1KB"  # less than one layer needs: one layer per probe group, 4 groups for 2 ranks
PROBE = ["--max-epochs", "3", "--probe-memory", GROUP_MEMORY, "--no-progress"]
NUMERIC_TOLERANCE = 1e-6  # bits


@pytest.fixture(autouse=True)
def _fastmi_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(ROWS, seed=5, min_words=1)) + "\n")
    models = {arch: make_tiny_model(arch, root / arch, hidden=16, layers=3) for arch in ("bert", "llama")}
    return root, corpus, models


def torchrun(
    args: list[str], cwd: Path, script: Path | None = None, extra_env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTMI_HOME=str(cwd / "home"), **(extra_env or {}))
    target = [str(script)] if script is not None else ["-m", "fastmi"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def cache_files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.safetensors"))}


def manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def extract_here(setup, out: Path) -> fastmi.ActivationCache:
    _, corpus, models = setup
    return fastmi.extract(
        str(models["bert"]),
        fastmi.Corpus.from_text_file(corpus),
        cache_dir=out,
        shard_rows=SHARD_ROWS,
        batch_size=BATCH,
        progress=False,
    )


@pytest.fixture(scope="module")
def reference_cache(setup):
    root, _, _ = setup
    return extract_here(setup, root / "reference")


@pytest.fixture(scope="module")
def two_process_cache(setup):
    root, corpus, models = setup
    out = root / "two"
    proc = torchrun(
        extract_argv(models["bert"], corpus, out),
        root,
    )
    assert proc.stdout.count("cache: ") == 1  # rank 0 alone prints
    return out


def extract_argv(model, corpus, out) -> list[str]:
    """`fastmi extract` of ``model`` over ``corpus`` into ``out``, at the shard and batch sizes of these tests."""
    args = ["--model", str(model), "--corpus", str(corpus), "--out", str(out), "--shard-rows", str(SHARD_ROWS)]
    return ["extract", *args, "--batch-size", str(BATCH), "--no-progress"]


def assert_tables_match(mine: list[dict], theirs: list[dict]) -> None:
    assert [(r["model"], r["layer"]) for r in mine] == [(r["model"], r["layer"]) for r in theirs]
    for a, b in zip(mine, theirs):
        for column, value in a.items():
            if isinstance(value, float):
                assert b[column] == pytest.approx(value, abs=NUMERIC_TOLERANCE), (a["layer"], column)
            else:
                assert b[column] == value, (a["layer"], column)


def test_two_processes_write_the_cache_one_process_writes(reference_cache, two_process_cache):
    reference = cache_files(reference_cache.directory)
    assert len(reference) == 2 + 4 * 5  # targets, the output embedding U, 4 layers x 5 shards
    assert cache_files(two_process_cache) == reference
    assert manifest(two_process_cache)["units"] == manifest(reference_cache.directory)["units"]
    assert manifest(two_process_cache)["targets"] == manifest(reference_cache.directory)["targets"]


def test_two_processes_probe_to_the_same_table(setup, reference_cache, two_process_cache, one_thread):
    root, _, _ = setup
    out = root / "probe-two"
    torchrun(["probe", "--cache", str(two_process_cache), "--out", str(out), *PROBE], root)
    result = RecoverabilityResult.from_json(out / "results.json")
    groups = result.config["layer_groups"]
    assert len(groups) == 4  # both ranks had groups to train
    # Each rank saved its own groups; together they are all the groups.
    saved = sorted(p.name for p in (two_process_cache / "probes").rglob("group_*.json"))
    assert len(saved) == 4
    # One process, same split, same memory budget (hence the same groups), probing the reference cache.
    mine = fastmi.recoverability(
        reference_cache,
        split=Split.load(out / "split.json"),
        train=TrainConfig(max_epochs=3),
        max_memory=1_000,
        progress=False,
        checkpoint_dir=root / "probe-one",
    )
    assert mine.config["layer_groups"] == groups
    assert_tables_match(mine.table, result.table)


def test_two_process_sweep_of_two_models_gives_the_one_process_results(setup, one_thread):
    root, corpus, models = setup
    args = [
        "sweep",
        "--model",
        str(models["bert"]),
        "--model",
        str(models["llama"]),
        "--corpus",
        str(corpus),
        "--shard-rows",
        str(SHARD_ROWS),
        *PROBE,
    ]
    torchrun([*args, "--out", str(root / "sweep-two")], root)
    assert main([*args, "--out", str(root / "sweep-one")]) == 0
    two = RecoverabilityResult.from_json(root / "sweep-two" / "results.json")
    one = RecoverabilityResult.from_json(root / "sweep-one" / "results.json")
    assert len(two.models) == 2 and len(two) == 8
    assert_tables_match(one.table, two.table)
    assert Split.load(root / "sweep-two" / "split.json") == Split.load(root / "sweep-one" / "split.json")
    for slug in ("bert", "llama"):
        assert cache_files(root / "sweep-two" / "cache" / slug) == cache_files(root / "sweep-one" / "cache" / slug)


# Rank 1 SIGKILLs itself half-way through writing its 6th shard file (layer 1 of its second
# shard): half the bytes in a temporary file, nothing renamed, its first shard listed.  torchrun
# then stops rank 0, which meanwhile holds its first shard unwritten (so that rank 1, not rank 0,
# takes the second shard whatever the timing).  Which shards rank 1 took depends on timing: it
# notes each file it starts in rank1-writes.txt.
KILLING_LAUNCHER = textwrap.dedent("""
    import os, signal, sys, time
    import fastmi.activations.cache as cache
    from fastmi.__main__ import main

    real_write, shard_writes = cache.atomic_write_bytes, []

    def dying_write(path, data):
        if os.environ["RANK"] == "0" and path.name.startswith("shard_"):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (
                not os.path.exists("rank1-writes.txt") or len(open("rank1-writes.txt").read().split()) < 6
            ):
                time.sleep(0.1)
        if os.environ["RANK"] == "1" and path.name.startswith("shard_"):
            shard_writes.append(path)
            with open("rank1-writes.txt", "a") as f:
                f.write(path.parent.name + "/" + path.name + "\\n")
            if len(shard_writes) == 6:
                with open(path.parent / (cache.TMP_PREFIX + path.name + ".killed"), "wb") as f:
                    f.write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        real_write(path, data)

    cache.atomic_write_bytes = dying_write
    sys.exit(main(sys.argv[1:]))
""")


def test_a_rank_killed_mid_extraction_then_one_process_finishes_bit_identical(setup, reference_cache, tmp_path):
    root, corpus, models = setup
    launcher = tmp_path / "killing_launcher.py"
    launcher.write_text(KILLING_LAUNCHER)
    out = tmp_path / "killed"
    proc = torchrun(
        extract_argv(models["bert"], corpus, out),
        tmp_path,
        script=launcher,
        check=False,
    )
    assert proc.returncode != 0
    assert f"exitcode  : -{int(signal.SIGKILL)}" in proc.stderr or "SIGKILL" in proc.stderr, proc.stderr[-3000:]
    names = (tmp_path / "rank1-writes.txt").read_text().split()  # layer_001/shard_00003.safetensors
    written = [int(name.split("shard_")[1].split(".")[0]) for name in names]
    first, second = set(written[:4]), set(written[4:])
    assert len(written) == 6 and len(first) == len(second) == 1 and first != second, written
    units = manifest(out)["units"]
    assert all(str(*first) in units[str(layer)] for layer in range(4))  # rank 1's first shard was listed
    assert not any(str(*second) in units.get(str(layer), {}) for layer in range(4))  # its second never was
    assert list(out.glob("layer_*/.tmp-*.killed"))  # the half-written file is there

    cache = extract_here(setup, out)  # one process, the same arguments
    assert cache.layers == [0, 1, 2, 3]
    assert not list(out.glob("layer_*/.tmp-*"))
    assert cache_files(out) == cache_files(reference_cache.directory)
    assert manifest(out)["units"] == manifest(reference_cache.directory)["units"]
